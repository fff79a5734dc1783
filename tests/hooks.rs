//! Hooks and return codes over real TCP, checked against Haraka's documented semantics
//! (../shared/reference/haraka-behaviour.md §2.3, Plugins.md): what each of CONT, OK, DENY,
//! DENYSOFT, DENYDISCONNECT, DENYSOFTDISCONNECT and DISCONNECT does at each inbound hook,
//! connect-time LOOP state, relaying, hook order, capabilities, plugin timeouts and panics,
//! transaction notes, and the built-in plugins.
//!
//! A scriptable test plugin (`test/script`) answers every hook from a table the test edits
//! between connections, and records the hooks it saw.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use posta::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin, PluginRegistry};
use posta::queue::decode;
use serde_json::json;

// ----- the scriptable plugin ---------------------------------------------------------

/// What the test plugin does when a hook reaches it.
#[derive(Debug, Clone)]
enum Act {
    /// Answer at once.
    Now(HookResult),
    /// Answer from an async future after a delay (`HookReturn::Later`).
    Later(HookResult, Duration),
    /// Panic inside `call`.
    Panic,
    /// Panic inside the async future.
    PanicLater,
}

#[derive(Debug, Clone)]
struct Rule {
    act: Act,
    /// Only when the hook's argument (address, host, verb…) contains this text.
    only_if: Option<String>,
}

/// The table and the log, shared by the test and the plugin.
#[derive(Default)]
struct Script {
    rules: Mutex<HashMap<HookName, Rule>>,
    log: Mutex<Vec<String>>,
    /// Set `connection.relaying` in the connect hook.
    relaying: AtomicBool,
    /// Keywords pushed in the capabilities hook.
    capabilities: Mutex<Vec<String>>,
    /// Transaction notes set in the mail hook.
    txn_notes: Mutex<Vec<(String, serde_json::Value)>>,
}

struct ScriptPlugin(Arc<Script>);

/// The text a rule's `only_if` is matched against.
fn hook_arg(hook: &Hook) -> String {
    match hook {
        Hook::Helo(h) | Hook::Ehlo(h) | Hook::Vrfy(h) => h.clone(),
        Hook::Mail(Some(m), _) => m.to_string(),
        Hook::Rcpt(r) | Hook::RcptOk(r) => r.mailbox.to_string(),
        Hook::UnrecognizedCommand { verb, args } => format!("{verb} {args}"),
        _ => String::new(),
    }
}

impl Plugin for ScriptPlugin {
    fn name(&self) -> &str {
        "test/script"
    }
    fn hooks(&self) -> &[HookName] {
        &HookName::ALL
    }
    fn call<'a>(&'a self, hook: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let s = &self.0;
        let name = hook.name();
        s.log.lock().unwrap().push(name.as_str().to_string());
        match name {
            HookName::Connect if s.relaying.load(Ordering::SeqCst) => cx.conn.relaying = true,
            HookName::Capabilities => cx
                .conn
                .capabilities
                .extend(s.capabilities.lock().unwrap().iter().cloned()),
            HookName::Mail => {
                if let Some(txn) = cx.txn.as_deref_mut() {
                    for (k, v) in s.txn_notes.lock().unwrap().iter() {
                        txn.notes.insert(k.clone(), v.clone());
                    }
                }
            }
            _ => {}
        }
        let rule = s.rules.lock().unwrap().get(&name).cloned();
        let Some(rule) = rule else {
            return HookResult::CONT.into();
        };
        if let Some(want) = &rule.only_if {
            if !hook_arg(hook).contains(want.as_str()) {
                return HookResult::CONT.into();
            }
        }
        match rule.act {
            Act::Now(r) => HookReturn::Done(r),
            Act::Later(r, delay) => HookReturn::Later(Box::pin(async move {
                tokio::time::sleep(delay).await;
                r
            })),
            Act::Panic => panic!("test/script panics in {} (on purpose)", name.as_str()),
            Act::PanicLater => HookReturn::Later(Box::pin(async move {
                tokio::task::yield_now().await;
                panic!("test/script panics in an async {} (on purpose)", name.as_str())
            })),
        }
    }
}

/// A running daemon with the test plugin registered as `test/script`.
struct Rig {
    srv: TestServer,
    script: Arc<Script>,
}

/// Start a daemon whose `config/plugins` is `plugins`; `setup` may write more config.
fn rig(plugins: &str, setup: impl FnOnce(&std::path::Path)) -> Rig {
    let script = Arc::new(Script::default());
    let mut reg = PluginRegistry::builtin();
    let shared = script.clone();
    reg.register("test/script", move |_cfg| {
        Ok(Arc::new(ScriptPlugin(shared.clone())) as Arc<dyn Plugin>)
    });
    let plugins = plugins.to_string();
    let srv = start_with(
        move |dir| {
            std::fs::write(dir.join("plugins"), plugins).unwrap();
            setup(dir);
        },
        reg,
    );
    Rig { srv, script }
}

impl Rig {
    fn client(&self) -> Client {
        self.srv.client()
    }
    fn set(&self, hook: HookName, act: Act) {
        self.set_rule(hook, Rule { act, only_if: None });
    }
    fn set_rule(&self, hook: HookName, rule: Rule) {
        self.script.rules.lock().unwrap().insert(hook, rule);
    }
    fn clear(&self) {
        self.script.rules.lock().unwrap().clear();
    }
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.script.log.lock().unwrap())
    }
    fn files(&self) -> usize {
        self.srv.queue_files().len()
    }
}

fn now(o: Outcome) -> Act {
    Act::Now(HookResult::new(o))
}

fn now_msg(o: Outcome, msg: &str) -> Act {
    Act::Now(HookResult::with_msg(o, msg))
}

// ----- client helpers that never panic on a closed connection --------------------------

type Check = Result<(), String>;

/// Send a command line; `None` when the server closed the connection instead of replying.
fn send_line(c: &mut Client, line: &str) -> Option<Reply> {
    let _ = c.reader.get_mut().write_all(format!("{line}\r\n").as_bytes());
    c.reply()
}

fn want_code(ctx: &str, c: &mut Client, line: &str, code: u16) -> Result<Reply, String> {
    match send_line(c, line) {
        Some(r) if r.code == code => Ok(r),
        other => Err(format!("{ctx}: {line:?} -> {other:?}, expected {code}")),
    }
}

const BODY: &[u8] = b"Subject: hooks test\r\n\r\nhello\r\n.\r\n";

/// Send a message body with its final dot.
fn end_of_data(c: &mut Client) -> Option<Reply> {
    let _ = c.reader.get_mut().write_all(BODY);
    c.reply()
}

/// What the client should see for one (hook, outcome).
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This reply, and the session goes on.
    Reply(u16),
    /// This reply, then the server closes the connection.
    ReplyClose(u16),
    /// The server closes the connection (any reply first must not be a success).
    Close,
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Cont,
    Outcome::Ok,
    Outcome::Deny,
    Outcome::DenySoft,
    Outcome::DenyDisconnect,
    Outcome::DenySoftDisconnect,
    Outcome::Disconnect,
];

/// The usual table: CONT and OK accept, DENY/DENYSOFT refuse, the *DISCONNECT variants
/// refuse and close, DISCONNECT closes (Plugins.md: "Immediately disconnect").
fn table(accept: u16, hard: u16, soft: u16) -> [Want; 7] {
    [
        Want::Reply(accept),
        Want::Reply(accept),
        Want::Reply(hard),
        Want::Reply(soft),
        Want::ReplyClose(hard),
        Want::ReplyClose(soft),
        Want::Close,
    ]
}

/// The command (or the end of the message) whose reply a hook decides.
#[derive(Clone, Copy)]
enum Trigger {
    Line(&'static str),
    EndOfData,
}

/// One hook's table and how to reach it.
struct Spec {
    hook: HookName,
    plugins: &'static str,
    /// Commands before the trigger; each must succeed.
    prelude: &'static [&'static str],
    trigger: Trigger,
    /// Indexed like [`OUTCOMES`].
    wants: [Want; 7],
    /// What proves the state after an open-ended reply (accepted: the reply was < 400).
    after: fn(&Rig, &mut Client, Outcome, bool, usize) -> Check,
    /// Haraka uses an OK result's message as the reply text.
    ok_msg_shown: bool,
}

const MAIL: &str = "MAIL FROM:<sender@remote.example>";
const RCPT: &str = "RCPT TO:<user@example.test>";

fn fire(c: &mut Client, t: Trigger) -> Option<Reply> {
    match t {
        Trigger::Line(l) => send_line(c, l),
        Trigger::EndOfData => end_of_data(c),
    }
}

/// A fresh client brought to the trigger of `spec`.
fn prepared(rig: &Rig, spec: &Spec, ctx: &str) -> Result<Client, String> {
    let mut c = rig.client();
    if c.greeting.code != 220 {
        return Err(format!("{ctx}: greeting {:?}", c.greeting));
    }
    for line in spec.prelude {
        match send_line(&mut c, line) {
            Some(r) if r.code < 400 => {}
            other => return Err(format!("{ctx}: prelude {line:?} -> {other:?}")),
        }
    }
    Ok(c)
}

/// Check a reply against `want`; `Ok(true)` when the session is still open.
fn check_want(ctx: &str, c: &mut Client, got: Option<Reply>, want: Want) -> Result<bool, String> {
    match want {
        Want::Reply(code) => match got {
            Some(r) if r.code == code => Ok(true),
            other => Err(format!("{ctx}: got {other:?}, expected {code} (connection open)")),
        },
        Want::ReplyClose(code) => match got {
            Some(r) if r.code == code => {
                if c.is_closed() {
                    Ok(false)
                } else {
                    Err(format!("{ctx}: {code} as expected but the connection stayed open"))
                }
            }
            other => Err(format!("{ctx}: got {other:?}, expected {code} and close")),
        },
        Want::Close => {
            if let Some(r) = &got {
                if r.code < 400 {
                    return Err(format!("{ctx}: got {r:?}, expected the connection to close"));
                }
            }
            if c.is_closed() {
                Ok(false)
            } else {
                Err(format!("{ctx}: got {got:?}, connection stayed open"))
            }
        }
    }
}

/// One case of a table; the rule is already set.
fn run_case(rig: &Rig, spec: &Spec, o: Outcome, want: Want) -> Check {
    let ctx = format!("{} {}", spec.hook.as_str(), o);
    let mut c = prepared(rig, spec, &ctx)?;
    let before = rig.files();
    let got = fire(&mut c, spec.trigger);
    let accepted = got.as_ref().is_some_and(|r| r.code < 400);
    if !check_want(&ctx, &mut c, got, want)? {
        if rig.files() != before {
            return Err(format!("{ctx}: a message was queued although the session was closed"));
        }
        return Ok(());
    }
    (spec.after)(rig, &mut c, o, accepted, before).map_err(|e| format!("{ctx}: {e}"))
}

/// A plugin message replaces the reply text.
fn run_msg_case(rig: &Rig, spec: &Spec, o: Outcome, shown: bool) -> Check {
    let msg = format!("scripted {} {}", spec.hook.as_str(), o);
    rig.set(spec.hook, now_msg(o, &msg));
    let ctx = format!("{} {} with message", spec.hook.as_str(), o);
    let mut c = prepared(rig, spec, &ctx)?;
    let Some(r) = fire(&mut c, spec.trigger) else {
        return Err(format!("{ctx}: connection closed without a reply"));
    };
    let has = r.lines.iter().any(|l| l.contains(&msg));
    match (shown, has) {
        (true, false) => Err(format!("{ctx}: reply {r:?} does not carry the plugin message")),
        (false, true) => Err(format!("{ctx}: reply {r:?} carries the plugin message")),
        _ => Ok(()),
    }
}

/// Run every outcome of `spec`, then the message cases; report every mismatch at once.
fn run_spec(spec: Spec) {
    let rig = rig(spec.plugins, |_| {});
    let mut errors = Vec::new();
    for (o, want) in OUTCOMES.iter().zip(spec.wants) {
        rig.set(spec.hook, now(*o));
        if let Err(e) = run_case(&rig, &spec, *o, want) {
            errors.push(e);
        }
    }
    for (o, want) in OUTCOMES.iter().zip(spec.wants) {
        let refusing = match want {
            Want::Reply(code) | Want::ReplyClose(code) => code >= 400,
            Want::Close => false,
        };
        let shown = match o {
            Outcome::Ok => Some(spec.ok_msg_shown),
            Outcome::Deny | Outcome::DenySoft | Outcome::DenyDisconnect | Outcome::DenySoftDisconnect if refusing => {
                Some(true)
            }
            _ => None,
        };
        if let Some(shown) = shown {
            if let Err(e) = run_msg_case(&rig, &spec, *o, shown) {
                errors.push(e);
            }
        }
    }
    assert!(errors.is_empty(), "{} mismatches:\n{}", errors.len(), errors.join("\n"));
}

// ----- what proves the state after a reply ---------------------------------------------

fn after_hello(_: &Rig, c: &mut Client, _: Outcome, accepted: bool, _: usize) -> Check {
    // A refused HELO/EHLO clears the hello: MAIL needs a new one.
    want_code("then MAIL", c, MAIL, if accepted { 250 } else { 503 }).map(drop)
}

fn after_mail(_: &Rig, c: &mut Client, _: Outcome, accepted: bool, _: usize) -> Check {
    // A refused MAIL resets the transaction: RCPT has nothing to join.
    want_code("then RCPT", c, RCPT, if accepted { 250 } else { 503 }).map(drop)
}

fn after_rcpt(_: &Rig, c: &mut Client, _: Outcome, accepted: bool, _: usize) -> Check {
    // A refused recipient is not kept: DATA has no recipient.
    want_code("then DATA", c, "DATA", if accepted { 354 } else { 503 }).map(drop)
}

fn after_data(rig: &Rig, c: &mut Client, _: Outcome, accepted: bool, before: usize) -> Check {
    if accepted {
        match end_of_data(c) {
            Some(r) if r.code == 250 => {}
            other => return Err(format!("message after 354 -> {other:?}")),
        }
        if rig.files() != before + 1 {
            return Err("accepted message not in the queue".into());
        }
        Ok(())
    } else {
        // DATA refused: the transaction is reset.
        want_code("then RCPT", c, RCPT, 503).map(drop)
    }
}

fn after_message(rig: &Rig, c: &mut Client, _: Outcome, accepted: bool, before: usize) -> Check {
    after_queued(rig, c, before, usize::from(accepted))
}

fn after_queue(rig: &Rig, c: &mut Client, o: Outcome, accepted: bool, before: usize) -> Check {
    // OK from a queue plugin: it took the message, posta's queue does not get it. CONT: posta's
    // own queue takes it (DESIGN.md §4, a deliberate difference from Haraka's 451).
    let queued = usize::from(accepted && o != Outcome::Ok);
    after_queued(rig, c, before, queued)
}

fn after_queued(rig: &Rig, c: &mut Client, before: usize, queued: usize) -> Check {
    let n = rig.files();
    if n != before + queued {
        return Err(format!("{} new queue files, expected {queued}", n - before));
    }
    // Accepted or refused, the message ends the transaction.
    want_code("then RCPT", c, RCPT, 503)?;
    want_code("then MAIL", c, MAIL, 250).map(drop)
}

fn after_usable(_: &Rig, c: &mut Client, _: Outcome, _: bool, _: usize) -> Check {
    want_code("then RSET", c, "RSET", 250).map(drop)
}

// ----- 1. each hook × each outcome -----------------------------------------------------

const WITH_HOST_LIST: &str = "test/script\nrcpt_to.in_host_list\n";

#[test]
fn helo_outcomes() {
    run_spec(Spec {
        hook: HookName::Helo,
        plugins: WITH_HOST_LIST,
        prelude: &[],
        trigger: Trigger::Line("HELO client.example"),
        wants: table(250, 550, 450),
        after: after_hello,
        ok_msg_shown: false,
    });
}

#[test]
fn ehlo_outcomes() {
    run_spec(Spec {
        hook: HookName::Ehlo,
        plugins: WITH_HOST_LIST,
        prelude: &[],
        trigger: Trigger::Line("EHLO client.example"),
        wants: table(250, 550, 450),
        after: after_hello,
        ok_msg_shown: false,
    });
}

#[test]
fn mail_outcomes() {
    run_spec(Spec {
        hook: HookName::Mail,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example"],
        trigger: Trigger::Line(MAIL),
        wants: table(250, 550, 450),
        after: after_mail,
        ok_msg_shown: true,
    });
}

#[test]
fn rcpt_outcomes() {
    // CONT falls through to rcpt_to.in_host_list, which accepts the local domain.
    run_spec(Spec {
        hook: HookName::Rcpt,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example", MAIL],
        trigger: Trigger::Line(RCPT),
        wants: table(250, 550, 450),
        after: after_rcpt,
        ok_msg_shown: true,
    });
}

#[test]
fn rcpt_ok_outcomes() {
    run_spec(Spec {
        hook: HookName::RcptOk,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example", MAIL],
        trigger: Trigger::Line(RCPT),
        wants: table(250, 550, 450),
        after: after_rcpt,
        ok_msg_shown: true,
    });
}

#[test]
fn data_outcomes() {
    run_spec(Spec {
        hook: HookName::Data,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example", MAIL, RCPT],
        trigger: Trigger::Line("DATA"),
        wants: table(354, 554, 451),
        after: after_data,
        ok_msg_shown: false,
    });
}

#[test]
fn data_post_outcomes() {
    run_spec(Spec {
        hook: HookName::DataPost,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example", MAIL, RCPT, "DATA"],
        trigger: Trigger::EndOfData,
        wants: table(250, 550, 450),
        after: after_message,
        ok_msg_shown: false,
    });
}

#[test]
fn queue_outcomes() {
    run_spec(Spec {
        hook: HookName::Queue,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example", MAIL, RCPT, "DATA"],
        trigger: Trigger::EndOfData,
        wants: table(250, 550, 450),
        after: after_queue,
        ok_msg_shown: true,
    });
}

#[test]
fn vrfy_outcomes() {
    let mut wants = table(550, 550, 450);
    wants[0] = Want::Reply(252); // CONT: "Just try sending a mail…"
    wants[1] = Want::Reply(250); // OK: "User OK"
    run_spec(Spec {
        hook: HookName::Vrfy,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example"],
        trigger: Trigger::Line("VRFY user"),
        wants,
        after: after_usable,
        ok_msg_shown: true,
    });
}

#[test]
fn noop_outcomes() {
    // Haraka's noop_respond knows DENY (500) and DENYDISCONNECT (500 + close); every other
    // code, DENYSOFT and DENYSOFTDISCONNECT included, answers 250 OK.
    let wants = [
        Want::Reply(250),
        Want::Reply(250),
        Want::Reply(500),
        Want::Reply(250),
        Want::ReplyClose(500),
        Want::Reply(250),
        Want::Close,
    ];
    run_spec(Spec {
        hook: HookName::Noop,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example"],
        trigger: Trigger::Line("NOOP"),
        wants,
        after: after_usable,
        ok_msg_shown: false,
    });
}

#[test]
fn unrecognized_command_outcomes() {
    // CONT (no plugin took it), DENY and DENYSOFT: 500; DENYDISCONNECT 521 + close;
    // DENYSOFTDISCONNECT 421 + close. OK: in Haraka the plugin wrote its own reply; posta
    // plugins cannot write to the socket, so the core answers 250 with the plugin's message.
    let wants = [
        Want::Reply(500),
        Want::Reply(250),
        Want::Reply(500),
        Want::Reply(500),
        Want::ReplyClose(521),
        Want::ReplyClose(421),
        Want::Close,
    ];
    run_spec(Spec {
        hook: HookName::UnrecognizedCommand,
        plugins: WITH_HOST_LIST,
        prelude: &["EHLO client.example"],
        trigger: Trigger::Line("XYZZY plugh"),
        wants,
        after: after_usable,
        ok_msg_shown: true,
    });
}

#[test]
fn connect_and_lookup_rdns_outcomes() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    let mut errors = Vec::new();
    for hook in [HookName::Connect, HookName::LookupRdns] {
        let (hard, soft) = if hook == HookName::Connect {
            ("Your mail is not welcome here", "Come back later")
        } else {
            ("rDNS Lookup Failed", "rDNS Temporary Failure")
        };
        // (outcome, code, closes, default text)
        let cases = [
            (Outcome::Cont, 220, false, None),
            (Outcome::Ok, 220, false, None),
            (Outcome::Deny, 554, false, Some(hard)),
            (Outcome::DenySoft, 421, false, Some(soft)),
            (Outcome::DenyDisconnect, 554, true, Some(hard)),
            (Outcome::DenySoftDisconnect, 421, true, Some(soft)),
            (Outcome::Disconnect, 554, true, Some(hard)),
        ];
        for (o, code, closes, text) in cases {
            let ctx = format!("{} {o}", hook.as_str());
            rig.clear();
            rig.set(hook, now(o));
            let mut c = rig.client();
            if c.greeting.code != code {
                errors.push(format!("{ctx}: greeting {:?}, expected {code}", c.greeting));
                continue;
            }
            if let Some(t) = text {
                if !c.greeting.text().ends_with(t) {
                    errors.push(format!("{ctx}: greeting {:?}, expected text {t:?}", c.greeting));
                }
            }
            if closes {
                if !c.is_closed() {
                    errors.push(format!("{ctx}: connection stayed open"));
                }
                continue;
            }
            // Open: accepted sessions work, refused ones are in the LOOP state.
            let want = if code == 220 { 250 } else { code };
            if let Err(e) = want_code(&ctx, &mut c, "EHLO client.example", want) {
                errors.push(e);
            }
        }
        // A message replaces the banner (connect OK) or the refusal text. (lookup_rdns OK's
        // message is the host name: see the next test.)
        let mut with_msg = vec![(Outcome::Deny, 554), (Outcome::DenySoftDisconnect, 421)];
        if hook == HookName::Connect {
            with_msg.push((Outcome::Ok, 220));
        }
        for (o, code) in with_msg {
            let msg = format!("scripted {} {o}", hook.as_str());
            rig.set(hook, now_msg(o, &msg));
            let c = rig.client();
            if c.greeting.code != code || !c.greeting.text().ends_with(&msg) {
                errors.push(format!("{} {o} with message: greeting {:?}", hook.as_str(), c.greeting));
            }
        }
    }
    assert!(errors.is_empty(), "{} mismatches:\n{}", errors.len(), errors.join("\n"));
}

#[test]
fn lookup_rdns_ok_sets_the_remote_host_name() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    rig.set(HookName::LookupRdns, now_msg(Outcome::Ok, "client.rdns.example"));
    let mut c = rig.client();
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    let r = c.expect("EHLO client.example", 250);
    assert!(
        r.lines[0].starts_with("mx.example.test Hello client.rdns.example [127.0.0.1]"),
        "{r:?}"
    );
}

// ----- 2. LOOP state after a refused connect -------------------------------------------

#[test]
fn connect_deny_loops_until_quit() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    for (act, code, text) in [
        (now(Outcome::Deny), 554, "Your mail is not welcome here"),
        (now(Outcome::DenySoft), 421, "Come back later"),
        (now_msg(Outcome::Deny, "go away, spammer"), 554, "go away, spammer"),
    ] {
        rig.set(HookName::Connect, act);
        let mut c = rig.client();
        assert_eq!(c.greeting.code, code, "{:?}", c.greeting);
        assert!(c.greeting.text().ends_with(text), "{:?}", c.greeting);
        let greeting = c.greeting.lines.clone();
        for line in [
            "EHLO client.example",
            "HELO client.example",
            MAIL,
            RCPT,
            "DATA",
            "NOOP",
            "RSET",
            "XYZZY",
        ] {
            let r = c.cmd(line);
            assert_eq!(r.code, code, "{line:?} in LOOP -> {r:?}");
            assert_eq!(r.lines, greeting, "{line:?} in LOOP -> {r:?}");
        }
        // Pipelined lines each get the stored reply, QUIT ends it.
        c.send(format!("EHLO a.example\r\n{MAIL}\r\nQUIT\r\n").as_bytes());
        assert_eq!(c.reply().unwrap().code, code);
        assert_eq!(c.reply().unwrap().code, code);
        let r = c.reply().expect("reply to QUIT");
        assert_eq!(r.code, 221, "{r:?}");
        assert!(c.is_closed());
    }
    assert!(rig.srv.queue_files().is_empty());
}

// ----- 3. recipients without a rcpt plugin, and relaying ------------------------------

#[test]
fn rcpt_cont_refuses_unless_relaying() {
    let rig = rig("test/script\n", |_| {});
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    c.expect(MAIL, 250);
    let r = c.expect(RCPT, 550);
    assert_eq!(r.text(), "5.7.1 I cannot deliver mail for <user@example.test>");
    c.expect("DATA", 503);
    c.expect("QUIT", 221);
    assert!(c.is_closed());

    // A plugin sets connection.relaying in connect: CONT accepts any recipient and the
    // message goes through queue_outbound instead of queue.
    rig.script.relaying.store(true, Ordering::SeqCst);
    rig.take_log();
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    let r = c.send_mail(
        "sender@remote.example",
        &["someone@elsewhere.example"],
        b"Subject: relay\r\n\r\nhi",
    );
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    let log = rig.take_log();
    assert!(log.iter().any(|h| h == "queue_outbound"), "{log:?}");
    assert!(!log.iter().any(|h| h == "queue"), "{log:?}");
    let files = rig.srv.queue_files();
    assert_eq!(files.len(), 1);
    let (todo, _) = decode(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(todo.domain, "elsewhere.example");
    assert_eq!(todo.rcpt_to[0].original, "<someone@elsewhere.example>");
}

// ----- 4. hook order ------------------------------------------------------------------

#[test]
fn hook_order_of_a_full_session() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    let r = c.send_mail(
        "sender@remote.example",
        &["user@example.test"],
        b"Subject: order\r\n\r\nhi",
    );
    assert_eq!(r.code, 250, "{r:?}");
    c.expect(MAIL, 250);
    c.expect("RSET", 250);
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    // Haraka (docs/Plugins.md): connect_init → lookup_rdns → connect → ehlo → capabilities →
    // mail → rcpt → rcpt_ok → data → data_post → queue → queue_ok → reset_transaction; RSET
    // runs rset then reset_transaction; QUIT runs quit, then disconnect.
    let expected = [
        "connect_init",
        "lookup_rdns",
        "connect",
        "ehlo",
        "capabilities",
        "mail",
        "rcpt",
        "rcpt_ok",
        "data",
        "data_post",
        "queue",
        // Haraka runs it in send_trans_email, right before the queue files are written.
        "pre_send_trans_email",
        "queue_ok",
        "reset_transaction",
        "mail",
        "rset",
        "reset_transaction",
        "quit",
        "disconnect",
    ];
    assert_eq!(rig.take_log(), expected);
}

#[test]
fn results_of_informational_hooks_are_ignored() {
    // connect_init, capabilities, queue_ok, rset, reset_transaction, quit and disconnect
    // answer the same whatever a plugin returns (Haraka §2.2/§2.3).
    let rig = rig(WITH_HOST_LIST, |_| {});
    for hook in [
        HookName::ConnectInit,
        HookName::Capabilities,
        HookName::QueueOk,
        HookName::Rset,
        HookName::ResetTransaction,
        HookName::Quit,
        HookName::Disconnect,
    ] {
        rig.set(hook, now(Outcome::DenyDisconnect));
    }
    let mut c = rig.client();
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.expect("EHLO client.example", 250);
    let r = c.send_mail("sender@remote.example", &["user@example.test"], b"Subject: x\r\n\r\nhi");
    assert_eq!(r.code, 250, "{r:?}");
    c.expect(MAIL, 250);
    c.expect("RSET", 250);
    c.expect(MAIL, 250);
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    assert_eq!(rig.srv.queue_files().len(), 1);
}

// ----- 5. capabilities -----------------------------------------------------------------

#[test]
fn capabilities_hook_adds_ehlo_keywords() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    *rig.script.capabilities.lock().unwrap() = vec!["XTEST".into(), "XOTHER one two".into()];
    let mut c = rig.client();
    for _ in 0..2 {
        let r = c.expect("EHLO client.example", 250);
        for cap in ["XTEST", "XOTHER one two"] {
            // Once each, after the core keywords, also on a repeated EHLO.
            assert_eq!(r.lines.iter().filter(|l| *l == cap).count(), 1, "{r:?}");
        }
        let pipelining = r.lines.iter().position(|l| l == "PIPELINING").unwrap();
        let xtest = r.lines.iter().position(|l| l == "XTEST").unwrap();
        assert!(pipelining < xtest, "{r:?}");
    }
    // HELO has no capabilities.
    let r = c.expect("HELO client.example", 250);
    assert_eq!(r.lines.len(), 1, "{r:?}");
}

// ----- 6. plugin timeout -----------------------------------------------------------------

#[test]
fn plugin_timeout_counts_as_denysoft() {
    let rig = rig(WITH_HOST_LIST, |dir| {
        std::fs::write(dir.join("plugin_timeout"), "1\n").unwrap();
    });
    rig.set(
        HookName::Rcpt,
        Act::Later(HookResult::new(Outcome::Ok), Duration::from_secs(5)),
    );
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    c.expect(MAIL, 250);
    let r = c.expect(RCPT, 450);
    assert!(r.text().ends_with("plugin timeout"), "{r:?}");
    // The session goes on: the recipient was not kept, the next one is.
    c.expect("DATA", 503);
    rig.clear();
    c.expect(RCPT, 250);
    c.expect("QUIT", 221);
}

#[test]
fn async_hooks_answer_like_sync_ones() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    let later = |o, msg: &str| Act::Later(HookResult::with_msg(o, msg), Duration::from_millis(20));
    rig.set(HookName::Mail, later(Outcome::Ok, "sender fine, asynchronously"));
    rig.set_rule(
        HookName::Rcpt,
        Rule {
            act: later(Outcome::Deny, "no such user, asynchronously"),
            only_if: Some("nobody@".into()),
        },
    );
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    let r = c.expect(MAIL, 250);
    assert!(r.text().ends_with("sender fine, asynchronously"), "{r:?}");
    let r = c.expect("RCPT TO:<nobody@example.test>", 550);
    assert!(r.text().ends_with("no such user, asynchronously"), "{r:?}");
    c.expect(RCPT, 250);
    c.expect("DATA", 354);
    assert_eq!(end_of_data(&mut c).unwrap().code, 250);
    assert_eq!(rig.srv.queue_files().len(), 1);
}

// ----- 7. panics ----------------------------------------------------------------------------

fn full_message(c: &mut Client) {
    let r = c.send_mail(
        "sender@remote.example",
        &["user@example.test"],
        b"Subject: survivor\r\n\r\nhi",
    );
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
}

#[test]
fn plugin_panic_closes_only_that_connection() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    let mut queued = 0;
    for act in [Act::Panic, Act::PanicLater] {
        rig.set_rule(
            HookName::Rcpt,
            Rule {
                act: act.clone(),
                only_if: Some("panic@".into()),
            },
        );
        let mut before = rig.client();
        before.expect("EHLO before.example", 250);

        let mut victim = rig.client();
        victim.expect("EHLO victim.example", 250);
        victim.expect(MAIL, 250);
        let r = send_line(&mut victim, "RCPT TO:<panic@example.test>").expect("a reply before closing");
        assert_eq!(r.code, 421, "{act:?}: {r:?}");
        assert!(r.text().starts_with("4.3.0"), "{act:?}: {r:?}");
        assert!(victim.is_closed(), "{act:?}");

        // The worker survived: a client connected before and one connected after both work.
        full_message(&mut before);
        let mut after = rig.client();
        after.expect("EHLO after.example", 250);
        full_message(&mut after);
        queued += 2;
        assert_eq!(rig.srv.queue_files().len(), queued, "{act:?}");
    }
}

// ----- 8. transaction notes ----------------------------------------------------------------

#[test]
fn transaction_notes_reach_the_queue_file() {
    let rig = rig(WITH_HOST_LIST, |_| {});
    *rig.script.txn_notes.lock().unwrap() = vec![
        ("test_tag".into(), json!("from the mail hook")),
        ("test_obj".into(), json!({ "n": 3, "list": ["a", "b"] })),
    ];
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    full_message(&mut c);
    let files = rig.srv.queue_files();
    assert_eq!(files.len(), 1);
    let (todo, _) = decode(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(
        todo.notes.get("test_tag"),
        Some(&json!("from the mail hook")),
        "{:?}",
        todo.notes
    );
    assert_eq!(todo.notes.get("test_obj"), Some(&json!({ "n": 3, "list": ["a", "b"] })));
}

#[test]
fn skip_plugins_note_skips_a_plugin_for_the_transaction() {
    // Haraka: transaction.notes.skip_plugins names plugins skipped for the rest of the
    // transaction. Skipping rcpt_to.in_host_list leaves nobody to accept the recipient.
    let rig = rig(WITH_HOST_LIST, |_| {});
    *rig.script.txn_notes.lock().unwrap() = vec![("skip_plugins".into(), json!(["rcpt_to.in_host_list"]))];
    let mut c = rig.client();
    c.expect("EHLO client.example", 250);
    c.expect(MAIL, 250);
    let r = c.expect(RCPT, 550);
    assert!(
        r.text().contains("I cannot deliver mail for <user@example.test>"),
        "{r:?}"
    );
}

// ----- 9. built-in plugins ------------------------------------------------------------------

#[test]
fn queue_discard_accepts_and_drops() {
    let srv = start(|dir| {
        std::fs::write(dir.join("plugins"), "rcpt_to.in_host_list\nqueue/discard\n").unwrap();
    });
    let mut c = srv.client();
    c.expect("EHLO client.example", 250);
    let r = c.send_mail("sender@remote.example", &["user@example.test"], b"Subject: x\r\n\r\nhi");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().contains("Message Queued ("), "{r:?}");
    c.expect("QUIT", 221);
    assert!(c.is_closed());
    assert!(srv.queue_files().is_empty(), "{:?}", srv.queue_files());
    assert!(temp_files(&srv.queue_dir()).is_empty());
}

fn helo_checks_server(ini: &'static str) -> TestServer {
    start(move |dir| {
        std::fs::write(dir.join("plugins"), "helo.checks\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(dir.join("helo.checks.ini"), ini).unwrap();
    })
}

#[test]
fn helo_checks() {
    let srv = helo_checks_server("[skip]\nprivate_ip=false\n");
    let mut c = srv.client();
    for (host, code) in [
        ("1.2.3.4", 550),     // bare IP
        ("nodots", 550),      // not a host name
        ("[10.0.0.1]", 550),  // literal that is not the client's address
        ("[127.0.0.1]", 250), // the client's own address
        ("client.example", 250),
    ] {
        let r = c.cmd(&format!("EHLO {host}"));
        assert_eq!(r.code, code, "EHLO {host} -> {r:?}");
    }
    let r = c.cmd("HELO nodots");
    assert_eq!(r.code, 550, "{r:?}");
    // The refused HELO cleared the hello.
    c.expect(MAIL, 503);

    // [reject] bare_ip=false: the check still runs but does not refuse.
    let srv = helo_checks_server("[skip]\nprivate_ip=false\n[reject]\nbare_ip=false\n");
    let mut c = srv.client();
    c.expect("EHLO 1.2.3.4", 250);
    c.expect("EHLO nodots", 550);

    // By default private and loopback clients are not checked (Haraka's skip.private_ip).
    let srv = helo_checks_server("");
    let mut c = srv.client();
    c.expect("EHLO nodots", 250);
    c.expect("EHLO [10.0.0.1]", 250);
}

#[test]
fn max_unrecognized_commands() {
    let srv = start(|dir| {
        std::fs::write(dir.join("plugins"), "rcpt_to.in_host_list\nmax_unrecognized_commands\n").unwrap();
        std::fs::write(dir.join("max_unrecognized_commands"), "3\n").unwrap();
    });
    let mut c = srv.client();
    c.expect("EHLO client.example", 250);
    for i in 0..3 {
        c.expect(&format!("XFOO{i}"), 500);
    }
    let r = send_line(&mut c, "XFOO3").expect("reply before closing");
    assert_eq!(r.code, 521, "{r:?}");
    assert!(c.is_closed());
}

fn early_talker_server() -> TestServer {
    start(|dir| {
        std::fs::write(dir.join("plugins"), "early_talker\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(
            dir.join("early_talker.ini"),
            "[main]\npause=0.3\n[skip]\nprivate=false\n",
        )
        .unwrap();
    })
}

#[test]
fn early_talker_is_refused_at_data() {
    let srv = early_talker_server();
    // Talk before the banner: EHLO goes out while the server still pauses in connect.
    let mut stream = TcpStream::connect(srv.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"EHLO early.example\r\n").unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let greeting = read_reply(&mut reader).expect("greeting");
    let mut c = Client { reader, greeting };
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    assert_eq!(c.reply().expect("EHLO reply").code, 250);
    c.expect(MAIL, 250);
    c.expect(RCPT, 250);
    let r = send_line(&mut c, "DATA").expect("reply to DATA");
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().ends_with("You talk too soon"), "{r:?}");
    assert!(c.is_closed());
    assert!(srv.queue_files().is_empty());

    // A client that waits for the banner is not refused.
    let mut c = srv.client();
    assert_eq!(c.greeting.code, 220);
    c.expect("EHLO polite.example", 250);
    full_message(&mut c);
    assert_eq!(srv.queue_files().len(), 1);
}

#[test]
fn unknown_plugin_stops_start_up() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("config");
    write_default_config(&dir);
    std::fs::write(dir.join("plugins"), "rcpt_to.in_host_list\nno.such.plugin\n").unwrap();
    let cfg = posta::config::Config::load(&dir).expect("the config itself loads");
    match PluginRegistry::builtin().build(&cfg) {
        Ok(_) => panic!("an unknown plugin name was accepted"),
        Err(e) => assert!(e.to_string().contains("no.such.plugin"), "{e}"),
    }
    match posta::server::start(&cfg, &PluginRegistry::builtin()) {
        Ok(_) => panic!("the daemon started with an unknown plugin"),
        Err(e) => assert!(e.to_string().contains("no.such.plugin"), "{e}"),
    }
}
