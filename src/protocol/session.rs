//! The server side of one SMTP session as a sans-IO state machine.
//!
//! The driver (the Connection actor) feeds bytes in with [`Session::receive`] and asks what to
//! do next with [`Session::next_action`]:
//!
//! - [`Action::Hook`]: run the plugin chain for this hook, then call [`Session::hook_done`].
//! - [`Action::Body`]: message bytes in stored form, for the spool.
//! - [`Action::Commit`]: write the message to the queue, then call [`Session::commit_done`].
//! - [`Action::Discard`]: drop the spooled body of an aborted message.
//! - [`Action::Pause`]: wait this long before going on (the AUTH failure delay).
//! - [`Action::NeedInput`]: write out [`Session::take_output`] and read more bytes.
//! - [`Action::StartTls`]: write out the output, run the TLS handshake, then call
//!   [`Session::tls_started`] (or [`Session::peer_closed`] when it failed).
//! - [`Action::Close`]: write out the output and close the connection.
//!
//! Replies accumulate in an output buffer; the driver writes them before it waits for input,
//! which is the flush rule of RFC 2920 (pipelining). One command is handled at a time, so
//! buffered input is never parsed ahead of the replies it depends on.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use ipnet::IpNet;

use super::command::{self, check_line, parse_command, Command, ParseContext};
use super::data::{BodyLimits, BodyReceiver, Mode};
use super::proxy::ProxyConfig;
use super::reply::Reply;
use super::sasl::{self, AuthSettings, Exchange, Mechanism, SaslError, Step as SaslStep};
use crate::hooks::hook::{Hook, HookSet};
use crate::hooks::outcome::{HookResult, Outcome};
use crate::hooks::state::{Connection, Hello, HelloVerb, Recipient, TlsInfo, Transaction};

/// What to do with a bare LF or bare CR in message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareEol {
    /// Store it as CRLF (the message is accepted).
    Normalize,
    /// Refuse the message with `550 5.6.0` at its end.
    Reject,
}

/// When STARTTLS is offered (the `tls` plugin and `tls.ini`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartTlsPolicy {
    /// The `tls` plugin is listed and its certificate loaded.
    pub enabled: bool,
    /// `[no_tls_hosts]`: clients (addresses or networks) never offered STARTTLS.
    pub no_tls_hosts: Vec<ipnet::IpNet>,
    /// `[main] no_starttls_ports[]`: local ports where STARTTLS is not offered.
    pub no_starttls_ports: Vec<u16>,
    /// `[main] requireAuthorized[]`: local ports where nothing but STARTTLS (or implicit TLS)
    /// with a verified client certificate may come before MAIL and AUTH.
    pub require_verified_ports: Vec<u16>,
}

impl StartTlsPolicy {
    /// True when this connection may use STARTTLS (it is not TLS yet).
    pub fn offers(&self, conn: &Connection) -> bool {
        let ip = conn.remote.ip.to_canonical();
        self.enabled
            && !conn.tls
            && !self.no_starttls_ports.contains(&conn.local.port())
            && !self.no_tls_hosts.iter().any(|n| n.contains(&ip))
    }

    /// On a `requireAuthorized` port, a session without TLS and a verified client certificate
    /// may not send mail or authenticate (RFC 3207: `530 5.7.0`).
    pub fn refuses(&self, conn: &Connection) -> Option<Reply> {
        let verified = conn.tls && conn.tls_info.as_ref().is_some_and(|t| t.verified_client);
        (self.require_verified_ports.contains(&conn.local.port()) && !verified).then(|| {
            Reply::ext(
                530,
                (5, 7, 0),
                "Must issue a STARTTLS command first (client certificate required)",
            )
        })
    }
}

/// Everything the session needs from configuration. Built once from the config directory.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub me: String,
    /// `[message] greeting[]`; empty for the default banner.
    pub greeting: Vec<String>,
    pub show_version: bool,
    pub banner_chars: usize,
    pub helo_msg: String,
    pub close_msg: String,
    pub smtputf8: bool,
    pub strict_rfc1869: bool,
    pub line_length: usize,
    pub data_line_length: usize,
    pub max_bytes: u64,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub max_received: usize,
    pub add_received: bool,
    pub bare_eol: BareEol,
    pub starttls: StartTlsPolicy,
    /// Hooks that have plugins; the others are skipped (they would answer CONT).
    pub hooks: HookSet,
    /// SMTP AUTH: mechanisms, when it is offered, brute-force limits, submission ports.
    pub auth: AuthSettings,
    /// `connection.ini [haproxy]`: PROXY protocol senders (read by the driver before the
    /// session starts).
    pub proxy: ProxyConfig,
    /// `xclient.hosts` when the `xclient` plugin is listed; `None`: XCLIENT is an unknown
    /// command.
    pub xclient_hosts: Option<Vec<IpNet>>,
}

impl SessionConfig {
    /// Haraka's defaults (connection.ini), for tests and as the base of the loader.
    pub fn defaults(me: &str) -> Self {
        SessionConfig {
            me: me.to_string(),
            greeting: Vec::new(),
            show_version: true,
            banner_chars: 6,
            helo_msg: "posta is at your service.".into(),
            close_msg: "closing connection. Have a jolly good day.".into(),
            smtputf8: true,
            strict_rfc1869: false,
            line_length: 512,
            data_line_length: 992,
            max_bytes: 26_214_400,
            max_recipients: 1000,
            max_errors: 10,
            max_received: 100,
            add_received: true,
            bare_eol: BareEol::Normalize,
            starttls: StartTlsPolicy::default(),
            hooks: HookSet::all(),
            auth: AuthSettings::default(),
            proxy: ProxyConfig::default(),
            xclient_hosts: None,
        }
    }
}

/// The next thing the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Hook(Hook),
    Body(Vec<u8>),
    Commit,
    Discard,
    NeedInput,
    /// `220 Go ahead` is in the output: write it, then run the TLS handshake. `discarded`
    /// bytes that the client had pipelined after STARTTLS were thrown away (RFC 3207 4.2;
    /// accepting them is the CVE-2011-0411 command injection).
    StartTls {
        discarded: usize,
    },
    Close,
    /// Sleep this long, then ask again (replies already queued go out after the pause).
    Pause(std::time::Duration),
}

/// Why a queue commit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Any I/O error: `451 4.3.0`.
    Temporary(String),
    /// No space left: `452 4.3.1`.
    DiskFull,
}

/// What to do with the result of the hook that is running.
#[derive(Debug)]
enum Then {
    Ignore,
    LookupRdns,
    Connect,
    Hello(HelloVerb, String),
    Capabilities,
    Unrecognized,
    Vrfy,
    Noop,
    Mail,
    Rcpt(Recipient),
    RcptOk(Recipient, Option<String>),
    Data(Option<(u64, bool)>),
    DataPost,
    MaxDataExceeded,
    Queue,
    QueueOk(String),
    Rset,
    Quit,
    Commit,
    /// The auth hook for this user and mechanism.
    Auth(String, Mechanism),
}

#[derive(Debug)]
enum Step {
    Hook(Hook, Then),
    Act(Action),
}

#[derive(Debug)]
enum Phase {
    /// Before connect hooks and banner.
    Start,
    Command,
    /// Receiving DATA.
    Data,
    /// Receiving a BDAT chunk of `remaining` octets.
    Bdat {
        remaining: u64,
        last: bool,
    },
    /// Skipping a BDAT chunk that was refused; `reply` goes out after it.
    BdatSkip {
        remaining: u64,
        reply: Reply,
    },
    /// Waiting for the end of a message (hooks, commit); input is left buffered.
    EndOfData,
    /// `220 Go ahead` sent: nothing is read until the driver reports the handshake.
    TlsHandshake {
        discarded: usize,
    },
    /// Connect was refused: every command gets this reply except QUIT (Haraka's LOOP state).
    Loop(Reply),
    /// In an AUTH exchange: the next line is a SASL response, not a command.
    Auth(Exchange),
    Closing,
}

/// A server SMTP session.
pub struct Session {
    cfg: Arc<SessionConfig>,
    conn: Connection,
    txn: Option<Transaction>,
    phase: Phase,
    inbuf: BytesMut,
    out: Vec<u8>,
    steps: VecDeque<Step>,
    waiting: Option<Then>,
    body: Option<BodyReceiver>,
    /// Body bytes were handed to the driver for the current message.
    spooled: bool,
    quit_seen: bool,
    /// Command lines taken so far (the slow-client deadlines time each line).
    lines: u64,
    /// The peer may use XCLIENT: decided once, for the client the session started with.
    xclient_allowed: bool,
}

const PIPELINABLE: [&str; 6] = ["RSET", "MAIL", "SEND", "SOML", "SAML", "RCPT"];

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, conn: Connection) -> Self {
        Session {
            cfg,
            conn,
            txn: None,
            phase: Phase::Start,
            inbuf: BytesMut::new(),
            out: Vec::new(),
            steps: VecDeque::new(),
            waiting: None,
            body: None,
            spooled: false,
            quit_seen: false,
            lines: 0,
            xclient_allowed: false,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
    pub fn txn(&self) -> Option<&Transaction> {
        self.txn.as_ref()
    }
    /// Both states at once, for a hook context.
    pub fn states_mut(&mut self) -> (&mut Connection, Option<&mut Transaction>) {
        (&mut self.conn, self.txn.as_mut())
    }

    /// Bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Closing | Phase::TlsHandshake { .. }) {
            return;
        }
        self.inbuf.extend_from_slice(bytes);
    }

    /// Input that arrived before the banner was sent (Haraka's early talker).
    pub fn receive_early(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.conn.early_talker = true;
            self.receive(bytes);
        }
    }

    /// Bytes buffered but not yet processed.
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Replies to write, in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// True once the session has decided to close.
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing)
    }

    /// The result of the hook returned by the last [`Action::Hook`].
    pub fn hook_done(&mut self, r: HookResult) {
        if let Some(then) = self.waiting.take() {
            self.resolve(then, r);
        }
    }

    /// The result of the last [`Action::Commit`]: the queue id text, or why it failed.
    pub fn commit_done(&mut self, r: Result<String, CommitError>) {
        match r {
            Ok(_) => {
                let uuid = self.txn.as_ref().map(|t| t.uuid.clone()).unwrap_or_default();
                let text = format!("Message Queued ({uuid})");
                self.spooled = false;
                self.hook(Hook::QueueOk(text.clone()), Then::QueueOk(text));
            }
            Err(CommitError::DiskFull) => self.end_message(Reply::ext(452, (4, 3, 1), "Insufficient system storage")),
            Err(CommitError::Temporary(_)) => {
                self.end_message(Reply::ext(451, (4, 3, 0), "Internal server error, try again later"))
            }
        }
    }

    /// True between messages (command phase): a graceful shutdown may end the session here.
    pub fn is_between_messages(&self) -> bool {
        matches!(self.phase, Phase::Command | Phase::Loop(_) | Phase::Auth(_)) && self.waiting.is_none()
    }

    /// The daemon is shutting down: `421 4.3.2` and close (RFC 3463 X.3.2: system not
    /// accepting network messages).
    pub fn shutting_down(&mut self) {
        let text = format!("{} shutting down, try again later", self.cfg.me);
        self.reply(Reply::ext(421, (4, 3, 2), text));
        self.close();
    }

    /// The TLS handshake succeeded (after [`Action::StartTls`], or before the banner on an
    /// implicit-TLS port). RFC 3207 4.2: the server forgets everything the client told it
    /// before TLS, so the client starts again with EHLO.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.conn.tls = true;
        self.conn.tls_info = Some(info);
        self.conn.hello = None;
        self.conn.capabilities.clear();
        self.inbuf.clear();
        self.reset_txn();
        if matches!(self.phase, Phase::TlsHandshake { .. }) {
            self.phase = Phase::Command;
        }
    }

    /// The driver refuses the session (a connection limit reached by the client XCLIENT
    /// named): `line` is the complete reply line; then close.
    pub fn refuse_and_close(&mut self, line: &[u8]) {
        self.out.extend_from_slice(line);
        self.close();
    }

    /// The client was idle for too long.
    pub fn timed_out(&mut self) {
        let text = format!("{} timeout, closing connection", self.cfg.me);
        self.reply(Reply::ext(421, (4, 4, 2), text));
        self.close();
    }

    /// A slow-client deadline passed (`protocol::deadline`): `421 4.4.2` and close.
    pub fn deadline_passed(&mut self, d: super::deadline::Deadline) {
        let text = format!("{} {}, closing connection", self.cfg.me, d.text());
        self.reply(Reply::ext(421, (4, 4, 2), text));
        self.close();
    }

    /// What the slow-client deadlines need to know about this session now.
    pub fn progress(&self) -> super::deadline::Progress {
        let in_body = matches!(self.phase, Phase::Data | Phase::Bdat { .. } | Phase::BdatSkip { .. });
        super::deadline::Progress {
            // Between BDAT chunks the transaction's message is still arriving.
            receiving_message: in_body || self.txn.as_ref().is_some_and(|t| t.chunking),
            // A SASL response line is timed like a command line.
            partial_line: matches!(self.phase, Phase::Command | Phase::Loop(_) | Phase::Auth(_))
                && !self.inbuf.is_empty(),
            lines: self.lines,
        }
    }

    /// The client closed its side or the socket failed.
    pub fn peer_closed(&mut self) {
        self.inbuf.clear();
        self.close();
    }

    /// The next thing to do.
    pub fn next_action(&mut self) -> Action {
        loop {
            if self.waiting.is_some() {
                // The driver must call hook_done/commit_done first; asking again is a no-op.
                return Action::NeedInput;
            }
            if let Some(step) = self.steps.pop_front() {
                match step {
                    Step::Act(a) => return a,
                    Step::Hook(h, then) if self.cfg.hooks.contains(h.name()) => {
                        self.waiting = Some(then);
                        return Action::Hook(h);
                    }
                    Step::Hook(_, then) => {
                        self.resolve(then, HookResult::CONT);
                        continue;
                    }
                }
            }
            if let Some(a) = self.advance() {
                return a;
            }
        }
    }

    /// Move the phase forward with buffered input. `Some` when the driver must act.
    fn advance(&mut self) -> Option<Action> {
        match &mut self.phase {
            Phase::Start => {
                self.phase = Phase::EndOfData;
                self.xclient_allowed = self.xclient_peer_allowed();
                self.hook(Hook::ConnectInit, Then::Ignore);
                self.hook(Hook::LookupRdns, Then::LookupRdns);
                None
            }
            Phase::Command | Phase::Loop(_) => self.command_phase(),
            Phase::Data => self.data_phase(),
            Phase::Bdat { .. } => self.bdat_phase(),
            Phase::BdatSkip { .. } => self.bdat_skip_phase(),
            Phase::EndOfData => Some(Action::NeedInput),
            Phase::Auth(_) => self.auth_phase(),
            Phase::TlsHandshake { discarded } => Some(Action::StartTls { discarded: *discarded }),
            Phase::Closing => Some(Action::Close),
        }
    }

    // ----- small helpers -------------------------------------------------------------

    fn reply(&mut self, r: Reply) {
        r.write_to(&mut self.out);
    }

    fn hook(&mut self, h: Hook, then: Then) {
        self.steps.push_back(Step::Hook(h, then));
    }

    fn act(&mut self, a: Action) {
        self.steps.push_back(Step::Act(a));
    }

    /// A protocol error reply; too many of them end the session.
    fn error(&mut self, r: Reply) {
        self.reply(r);
        self.conn.errors += 1;
        if self.cfg.max_errors > 0 && self.conn.errors >= self.cfg.max_errors {
            self.reply(Reply::ext(421, (4, 7, 0), "Too many errors, closing connection"));
            self.close();
        }
    }

    /// End the session: reset the transaction, run the disconnect hook, close.
    fn close(&mut self) {
        if matches!(self.phase, Phase::Closing) {
            return;
        }
        self.steps.clear();
        self.waiting = None;
        self.reset_txn();
        self.phase = Phase::Closing;
        self.hook(Hook::Disconnect, Then::Ignore);
        self.act(Action::Close);
    }

    /// Drop the transaction (if any), discard its spooled body, run reset_transaction.
    fn reset_txn(&mut self) {
        self.body = None;
        if self.spooled {
            self.spooled = false;
            self.act(Action::Discard);
        }
        if self.txn.take().is_some() {
            self.hook(Hook::ResetTransaction, Then::Ignore);
        }
    }

    /// A plugin took the message: the spooled copy is not needed.
    fn spooled_drop(&mut self) {
        if self.spooled {
            self.spooled = false;
            self.act(Action::Discard);
        }
    }

    /// Finish a message with a reply and reset the transaction.
    fn end_message(&mut self, r: Reply) {
        self.reply(r);
        self.reset_txn();
        if !matches!(self.phase, Phase::Closing) {
            self.phase = Phase::Command;
        }
    }

    fn parse_context(&self) -> ParseContext {
        ParseContext {
            esmtp: self.conn.esmtp(),
            strict: self.cfg.strict_rfc1869 && !self.conn.relaying,
            smtputf8_offered: self.cfg.smtputf8,
            utf8_txn: self.txn.as_ref().is_some_and(|t| t.mail_params.smtputf8),
            max_bytes: self.cfg.max_bytes,
        }
    }

    // ----- command phase -------------------------------------------------------------

    /// Take one command line from the buffer: `Ok(None)` when none is complete yet.
    fn take_line(&mut self) -> Result<Option<BytesMut>, ()> {
        let limit = self.cfg.line_length.max(3);
        let window = &self.inbuf[..self.inbuf.len().min(limit)];
        match memchr::memchr(b'\n', window) {
            Some(i) => {
                let mut line = self.inbuf.split_to(i + 1);
                self.lines += 1;
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Ok(Some(line))
            }
            None if self.inbuf.len() >= limit => Err(()),
            None => Ok(None),
        }
    }

    fn command_phase(&mut self) -> Option<Action> {
        // A TLS ClientHello has no line ending and is often longer than a command line.
        if self.inbuf.starts_with(&[0x16, 0x03]) && !matches!(self.phase, Phase::Loop(_)) {
            self.inbuf.clear();
            self.error(command::LineError::TlsHello.reply());
            self.close();
            return None;
        }
        if super::proxy::is_v2_signature(&self.inbuf) {
            self.inbuf.clear();
            self.cmd_proxy();
            return None;
        }
        let line = match self.take_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Some(Action::NeedInput),
            Err(()) => {
                self.inbuf.clear();
                self.reply(Reply::ext(521, (5, 5, 2), "Command line too long"));
                self.close();
                return None;
            }
        };
        if let Phase::Loop(r) = &self.phase {
            let r = r.clone();
            self.loop_line(&line, r);
            return None;
        }
        let text = match check_line(&line, self.conn.esmtp()) {
            Ok(t) => t.to_owned(),
            Err(e) => {
                let fatal = e == command::LineError::TlsHello;
                self.error(e.reply());
                if fatal {
                    self.close();
                }
                return None;
            }
        };
        let cmd = parse_command(&text);
        self.note_pipelining(cmd.verb());
        self.dispatch(cmd);
        None
    }

    /// RFC 2920 / Haraka: after EHLO, only RSET, MAIL, SEND, SOML, SAML and RCPT may be
    /// followed by more commands in the same group; anything else means the client did not
    /// wait for our reply (an early talker).
    fn note_pipelining(&mut self, verb: &str) {
        if self.inbuf.is_empty() || verb == "BDAT" {
            return;
        }
        if self.conn.esmtp() && PIPELINABLE.contains(&verb) {
            self.conn.pipelining = true;
        } else {
            self.conn.early_talker = true;
        }
    }

    fn loop_line(&mut self, line: &[u8], r: Reply) {
        let is_quit = line.trim_ascii_end().eq_ignore_ascii_case(b"QUIT");
        if is_quit && !self.quit_seen {
            self.quit_seen = true;
            self.quit();
        } else if !is_quit {
            self.reply(r);
        }
    }

    fn dispatch(&mut self, cmd: Command<'_>) {
        match cmd {
            Command::Helo(a) => self.cmd_hello(HelloVerb::Helo, a),
            Command::Ehlo(a) => self.cmd_hello(HelloVerb::Ehlo, a),
            Command::Mail(a) => self.cmd_mail(a),
            Command::Rcpt(a) => self.cmd_rcpt(a),
            Command::Data(a) => self.cmd_data(a),
            Command::Bdat(a) => self.cmd_bdat(a),
            Command::Rset(a) => self.no_args(a, |s| s.hook(Hook::Rset, Then::Rset)),
            Command::Noop => self.hook(Hook::Noop, Then::Noop),
            Command::Quit(a) => self.no_args(a, Session::quit),
            Command::Vrfy(a) => self.hook(Hook::Vrfy(a.to_string()), Then::Vrfy),
            Command::Help => self.reply(Reply::ext(
                214,
                (2, 0, 0),
                "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )),
            Command::Auth(a) => self.cmd_auth(a),
            Command::StartTls(a) => self.cmd_starttls(a),
            Command::Proxy(_) => self.cmd_proxy(),
            Command::Xclient(args) => self.cmd_xclient(args),
            Command::Unknown { verb, args } => self.unrecognized(verb, args),
        }
    }

    fn unrecognized(&mut self, verb: &str, args: &str) {
        self.conn.unrecognized_commands += 1;
        let h = Hook::UnrecognizedCommand {
            verb: verb.to_string(),
            args: args.to_string(),
        };
        self.hook(h, Then::Unrecognized);
    }

    /// RFC 3207. Not offered (no `tls` plugin, `no_tls_hosts`, `no_starttls_ports`): an
    /// unknown command, as in Haraka. Inside a transaction it is refused, so a message never
    /// mixes an envelope given in clear with one given under TLS.
    fn cmd_starttls(&mut self, args: &str) {
        if self.conn.tls {
            return self.error(Reply::ext(503, (5, 5, 1), "Already using TLS"));
        }
        if !self.cfg.starttls.offers(&self.conn) {
            return self.unrecognized("STARTTLS", args);
        }
        if !args.is_empty() {
            return self.error(Reply::ext(501, (5, 5, 4), "Syntax error (no parameters allowed)"));
        }
        // Credentials already went in clear; a TLS layer now would not protect them, and the
        // reset RFC 3207 asks for would have to drop the authentication too.
        if self.conn.auth_user.is_some() {
            return self.error(Reply::ext(503, (5, 5, 1), "STARTTLS not allowed after AUTH"));
        }
        if self.txn.is_some() {
            return self.error(Reply::ext(503, (5, 5, 1), "STARTTLS not allowed inside a transaction"));
        }
        self.reply(Reply::ext(220, (2, 0, 0), "Go ahead"));
        let discarded = self.inbuf.len();
        self.inbuf.clear();
        self.phase = Phase::TlsHandshake { discarded };
    }

    fn no_args(&mut self, args: &str, f: fn(&mut Session)) {
        if args.is_empty() {
            f(self)
        } else {
            self.error(Reply::ext(501, (5, 5, 4), "Syntax error"))
        }
    }

    fn quit(&mut self) {
        self.hook(Hook::Quit, Then::Quit);
    }

    fn cmd_hello(&mut self, verb: HelloVerb, host: &str) {
        if host.is_empty() {
            let v = if verb == HelloVerb::Helo { "HELO" } else { "EHLO" };
            self.error(Reply::plain(
                501,
                format!("{v} requires domain/address - see RFC-5321 4.1.1.1"),
            ));
            return;
        }
        // HELO/EHLO resets the transaction (RFC 5321 4.1.4).
        self.reset_txn();
        let hook = match verb {
            HelloVerb::Helo => Hook::Helo(host.to_string()),
            HelloVerb::Ehlo => Hook::Ehlo(host.to_string()),
        };
        self.hook(hook, Then::Hello(verb, host.to_string()));
    }

    fn cmd_mail(&mut self, args: &str) {
        if self.conn.hello.is_none() {
            return self.error(Reply::ext(503, (5, 5, 1), "Use EHLO/HELO before MAIL"));
        }
        if let Some(r) = self.cfg.starttls.refuses(&self.conn) {
            return self.error(r);
        }
        if self.needs_auth() {
            return self.reply(Reply::ext(550, (5, 7, 0), "Authentication required"));
        }
        if self.txn.is_some() {
            return self.error(Reply::ext(503, (5, 5, 1), "Nested MAIL command"));
        }
        match command::parse_mail(args, self.parse_context()) {
            Err(r) => self.error(r),
            Ok((from, params)) => {
                self.conn.tran_count += 1;
                let uuid = format!("{}.{}", self.conn.uuid, self.conn.tran_count);
                self.txn = Some(Transaction::new(uuid, from.clone(), params.clone()));
                self.hook(Hook::Mail(from, params), Then::Mail);
            }
        }
    }

    fn cmd_rcpt(&mut self, args: &str) {
        let Some(txn) = &self.txn else {
            return self.error(Reply::ext(503, (5, 5, 1), "Use MAIL before RCPT"));
        };
        if self.cfg.max_recipients > 0 && txn.rcpt_to.len() >= self.cfg.max_recipients {
            return self.reply(Reply::ext(452, (4, 5, 3), "Too many recipients"));
        }
        match command::parse_rcpt(args, self.parse_context()) {
            Err(r) => self.error(r),
            Ok((mut mailbox, params)) => {
                // `<postmaster>` is this host's postmaster (RFC 5321 4.5.1).
                if mailbox.domain.is_empty() {
                    mailbox.domain = self.cfg.me.clone();
                }
                let r = Recipient { mailbox, params };
                self.hook(Hook::Rcpt(r.clone()), Then::Rcpt(r));
            }
        }
    }

    /// Checks shared by DATA and BDAT: a transaction with at least one recipient.
    fn data_allowed(&self) -> Result<(), Reply> {
        let Some(txn) = &self.txn else {
            return Err(Reply::ext(503, (5, 5, 1), "MAIL required first"));
        };
        if txn.rcpt_to.is_empty() {
            return Err(if self.conn.pipelining {
                Reply::ext(554, (5, 5, 1), "No valid recipients")
            } else {
                Reply::ext(503, (5, 5, 1), "RCPT required first")
            });
        }
        Ok(())
    }

    fn cmd_data(&mut self, args: &str) {
        if !args.is_empty() {
            return self.error(Reply::ext(501, (5, 5, 4), "Syntax error"));
        }
        if let Err(r) = self.data_allowed() {
            return self.error(r);
        }
        if self.txn.as_ref().is_some_and(|t| t.chunking) {
            return self.error(Reply::ext(503, (5, 5, 1), "DATA not allowed after BDAT"));
        }
        if self
            .txn
            .as_ref()
            .is_some_and(|t| t.mail_params.body == Some(command::Body::BinaryMime))
        {
            return self.error(Reply::ext(503, (5, 5, 1), "BODY=BINARYMIME requires BDAT"));
        }
        self.hook(Hook::Data, Then::Data(None));
    }

    fn cmd_bdat(&mut self, args: &str) {
        let Some((size, last)) = command::parse_bdat(args) else {
            return self.error(Reply::ext(501, (5, 5, 4), "Syntax: BDAT size [LAST]"));
        };
        if let Err(r) = self.data_allowed() {
            self.conn.errors += 1;
            self.phase = Phase::BdatSkip {
                remaining: size,
                reply: r,
            };
            return;
        }
        if self.txn.as_ref().is_some_and(|t| t.chunking) {
            self.phase = Phase::Bdat { remaining: size, last };
        } else {
            self.phase = Phase::EndOfData;
            self.hook(Hook::Data, Then::Data(Some((size, last))));
        }
    }

    // ----- message data --------------------------------------------------------------

    fn limits(&self) -> BodyLimits {
        BodyLimits {
            max_bytes: self.cfg.max_bytes,
            max_line: self.cfg.data_line_length,
        }
    }

    /// Start a message body: the receiver and our Received header.
    fn begin_body(&mut self, mode: Mode) {
        self.body = Some(BodyReceiver::new(mode, self.limits()));
        if self.cfg.add_received {
            let header = self.received_header();
            self.spooled = true;
            self.act(Action::Body(header.into_bytes()));
        }
    }

    /// Feed buffered DATA to the receiver.
    fn data_phase(&mut self) -> Option<Action> {
        if self.inbuf.is_empty() {
            return Some(Action::NeedInput);
        }
        let body = self.body.as_mut()?;
        let mut out = Vec::with_capacity(self.inbuf.len() + 64);
        let fed = body.feed(&self.inbuf, &mut out);
        self.inbuf.advance(fed.consumed);
        self.spool(out);
        if fed.done {
            self.phase = Phase::EndOfData;
            self.end_of_data();
        }
        None
    }

    /// Hand body bytes to the driver, ahead of whatever the end of the message queues.
    fn spool(&mut self, out: Vec<u8>) {
        if !out.is_empty() {
            self.spooled = true;
            self.act(Action::Body(out));
        }
    }

    fn bdat_phase(&mut self) -> Option<Action> {
        let Phase::Bdat { remaining, last } = self.phase else {
            return None;
        };
        let take = (self.inbuf.len() as u64).min(remaining) as usize;
        if take == 0 && remaining > 0 {
            return Some(Action::NeedInput);
        }
        let chunk = self.inbuf.split_to(take);
        let left = remaining - take as u64;
        let body = self.body.as_mut()?;
        let mut out = Vec::with_capacity(take + 64);
        body.feed(&chunk, &mut out);
        if left > 0 {
            self.phase = Phase::Bdat { remaining: left, last };
            self.spool(out);
        } else {
            self.bdat_chunk_done(last, out);
        }
        None
    }

    fn bdat_chunk_done(&mut self, last: bool, mut out: Vec<u8>) {
        let Some(body) = self.body.as_mut() else {
            return;
        };
        if last {
            body.finish(&mut out);
        }
        self.spool(out);
        let Some(body) = self.body.as_mut() else {
            return;
        };
        if body.too_big() {
            // RFC 3030 2: answer the failed chunk now; the transaction is over.
            self.body = None;
            self.phase = Phase::EndOfData;
            return self.hook(Hook::MaxDataExceeded, Then::MaxDataExceeded);
        }
        if last {
            self.phase = Phase::EndOfData;
            self.end_of_data();
        } else {
            let n = body.bytes();
            self.phase = Phase::Command;
            self.reply(Reply::ext(250, (2, 0, 0), format!("{n} octets received")));
        }
    }

    fn bdat_skip_phase(&mut self) -> Option<Action> {
        let Phase::BdatSkip { remaining, .. } = &mut self.phase else {
            return None;
        };
        let take = (self.inbuf.len() as u64).min(*remaining) as usize;
        self.inbuf.advance(take);
        *remaining -= take as u64;
        if *remaining > 0 {
            return Some(Action::NeedInput);
        }
        if let Phase::BdatSkip { reply, .. } = std::mem::replace(&mut self.phase, Phase::Command) {
            self.reply(reply);
            if self.cfg.max_errors > 0 && self.conn.errors >= self.cfg.max_errors {
                self.reply(Reply::ext(421, (4, 7, 0), "Too many errors, closing connection"));
                self.close();
            }
        }
        None
    }

    /// The whole message is in: size, line-ending and loop checks, then data_post.
    fn end_of_data(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if let Some(t) = self.txn.as_mut() {
            t.data_bytes = body.bytes();
        }
        if body.too_big() {
            return self.hook(Hook::MaxDataExceeded, Then::MaxDataExceeded);
        }
        if body.bare_eol() && self.cfg.bare_eol == BareEol::Reject && body_is_text(self.txn.as_ref()) {
            return self.end_message(Reply::ext(550, (5, 6, 0), "Bare CR or LF in message (RFC 5321 2.3.8)"));
        }
        if self.cfg.max_received > 0 && body.received_headers() > self.cfg.max_received {
            return self.end_message(Reply::ext(
                550,
                (5, 4, 6),
                "Too many received headers - possible mail loop",
            ));
        }
        self.hook(Hook::DataPost, Then::DataPost);
    }

    /// Our trace header (RFC 5321 4.4), in Haraka's layout.
    fn received_header(&self) -> String {
        let helo = self.conn.hello.as_ref().map(|h| h.host.as_str()).unwrap_or("unknown");
        let txn = self.txn.as_ref();
        let proto = match (self.conn.esmtp(), txn.is_some_and(|t| t.mail_params.smtputf8)) {
            (true, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            _ => "SMTP",
        };
        // RFC 3848: S for TLS sessions, A for authenticated clients (ESMTPSA); the TLS
        // version and cipher go in a comment.
        let mut proto = proto.to_string();
        if self.conn.tls {
            proto.push('S');
        }
        if self.conn.auth_user.is_some() {
            proto.push('A');
        }
        if let Some(t) = &self.conn.tls_info {
            proto = format!("{proto} ({} {})", t.version, t.cipher);
        }
        format!(
            "Received: from {helo} ({})\r\n\tby {} (posta/{}) with {proto} id {}\r\n\tenvelope-from {};\r\n\t{}\r\n",
            self.conn.remote.display(),
            self.cfg.me,
            env!("CARGO_PKG_VERSION"),
            txn.map(|t| t.uuid.as_str()).unwrap_or(""),
            txn.map(|t| t.sender()).unwrap_or_default(),
            chrono::Local::now().to_rfc2822(),
        )
    }

    // ----- hook results --------------------------------------------------------------

    fn resolve(&mut self, then: Then, r: HookResult) {
        match then {
            Then::Ignore => {}
            Then::LookupRdns => self.after_rdns(r),
            Then::Connect => self.after_connect(r),
            Then::Hello(verb, host) => self.after_hello(verb, host, r),
            Then::Capabilities => self.after_capabilities(),
            Then::Unrecognized => self.after_unrecognized(r),
            Then::Vrfy => self.after_vrfy(r),
            Then::Noop => self.after_noop(r),
            Then::Mail => self.after_mail(r),
            Then::Rcpt(rcpt) => self.after_rcpt(rcpt, r),
            Then::RcptOk(rcpt, msg) => self.after_rcpt_ok(rcpt, msg, r),
            Then::Data(bdat) => self.after_data(bdat, r),
            Then::DataPost => self.after_data_post(r),
            Then::MaxDataExceeded => self.after_max_data(r),
            Then::Queue => self.after_queue(r),
            Then::QueueOk(text) => self.after_queue_ok(text),
            Then::Commit => self.act(Action::Commit),
            Then::Auth(user, mech) => self.after_auth(user, mech, r),
            Then::Rset => {
                self.reply(Reply::ext(250, (2, 0, 0), "OK"));
                self.reset_txn();
            }
            Then::Quit => {
                let text = r
                    .msg
                    .unwrap_or_else(|| format!("{} {}", self.cfg.me, self.cfg.close_msg));
                self.reply(Reply::ext(221, (2, 0, 0), text));
                self.close();
            }
        }
    }

    /// The common DENY* handling: `Some(disconnect)` when the outcome rejects.
    fn deny(&mut self, r: &HookResult, hard: Reply, soft: Reply) -> Option<bool> {
        let (reply, disconnect) = match r.outcome {
            Outcome::Deny => (hard, false),
            Outcome::DenyDisconnect => (hard, true),
            Outcome::DenySoft => (soft, false),
            Outcome::DenySoftDisconnect => (soft, true),
            Outcome::Disconnect => {
                self.close();
                return Some(true);
            }
            _ => return None,
        };
        let reply = match &r.msg {
            Some(m) => reply.with_text(m),
            None => reply,
        };
        self.reply(reply);
        if disconnect {
            self.close();
        }
        Some(disconnect)
    }

    fn after_rdns(&mut self, r: HookResult) {
        match r.outcome {
            Outcome::Ok => self.conn.remote.host = r.msg.clone().filter(|m| !m.is_empty()),
            Outcome::Deny | Outcome::DenySoft => {
                let reply = refuse_reply(r.outcome, "rDNS Lookup Failed", "rDNS Temporary Failure", &r.msg);
                self.phase = Phase::Loop(reply.clone());
                self.reply(reply);
                return;
            }
            Outcome::DenyDisconnect | Outcome::Disconnect | Outcome::DenySoftDisconnect => {
                self.reply(refuse_reply(
                    r.outcome,
                    "rDNS Lookup Failed",
                    "rDNS Temporary Failure",
                    &r.msg,
                ));
                return self.close();
            }
            _ => {}
        }
        self.hook(Hook::Connect, Then::Connect);
    }

    fn after_connect(&mut self, r: HookResult) {
        match r.outcome {
            Outcome::Deny | Outcome::DenySoft => {
                let reply = refuse_reply(r.outcome, "Your mail is not welcome here", "Come back later", &r.msg);
                self.phase = Phase::Loop(reply.clone());
                self.reply(reply);
            }
            Outcome::DenyDisconnect | Outcome::Disconnect | Outcome::DenySoftDisconnect => {
                self.reply(refuse_reply(
                    r.outcome,
                    "Your mail is not welcome here",
                    "Come back later",
                    &r.msg,
                ));
                self.close();
            }
            _ => {
                self.phase = Phase::Command;
                let banner = self.banner(r.msg.as_deref());
                self.reply(banner);
            }
        }
    }

    /// `220 <me> ESMTP posta/<version> ready (<uuid chars>)`, or the configured greeting.
    fn banner(&self, hook_msg: Option<&str>) -> Reply {
        let n = self.cfg.banner_chars.min(self.conn.uuid.len());
        let id = if n > 0 {
            format!(" ({})", &self.conn.uuid[..n])
        } else {
            String::new()
        };
        if let Some(m) = hook_msg {
            return Reply::plain(220, m);
        }
        let mut lines = match self.cfg.greeting.split_first() {
            Some((first, rest)) => {
                let mut v = vec![format!("{} ESMTP {first}{id}", self.cfg.me)];
                v.extend(rest.iter().cloned());
                v
            }
            None => {
                let ver = if self.cfg.show_version {
                    concat!("/", env!("CARGO_PKG_VERSION"))
                } else {
                    ""
                };
                vec![format!("{} ESMTP posta{ver} ready{id}", self.cfg.me)]
            }
        };
        lines.retain(|l| !l.is_empty());
        Reply::multi(220, lines)
    }

    fn after_hello(&mut self, verb: HelloVerb, host: String, r: HookResult) {
        let hard = Reply::plain(550, "HELO/EHLO denied");
        let soft = Reply::plain(450, "HELO/EHLO denied");
        if self.deny(&r, hard, soft).is_some() {
            self.conn.hello = None;
            return;
        }
        self.conn.hello = Some(Hello { verb, host });
        match verb {
            HelloVerb::Helo => {
                let text = format!(
                    "{} Hello {}, {}",
                    self.cfg.me,
                    self.conn.remote.display(),
                    self.cfg.helo_msg
                );
                self.reply(Reply::plain(250, text));
            }
            HelloVerb::Ehlo => {
                self.conn.capabilities.clear();
                self.hook(Hook::Capabilities, Then::Capabilities);
            }
        }
    }

    fn after_capabilities(&mut self) {
        let mut lines = vec![format!(
            "{} Hello {}, {}",
            self.cfg.me,
            self.conn.remote.display(),
            self.cfg.helo_msg
        )];
        lines.push("PIPELINING".into());
        lines.push("8BITMIME".into());
        if self.cfg.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        lines.push(format!("SIZE {}", self.cfg.max_bytes));
        lines.extend(["ENHANCEDSTATUSCODES", "CHUNKING", "BINARYMIME", "DSN"].map(String::from));
        if self.cfg.starttls.offers(&self.conn) {
            lines.push("STARTTLS".into());
        }
        lines.extend(self.auth_capability());
        if self.xclient_allowed {
            lines.push(super::xclient::CAPABILITY.into());
        }
        lines.extend(self.conn.capabilities.iter().cloned());
        self.reply(Reply::multi(250, lines));
    }

    fn after_unrecognized(&mut self, r: HookResult) {
        match r.outcome {
            // In Haraka the plugin writes its own reply; posta plugins cannot touch the
            // socket, so the core answers 250 with the plugin's message.
            Outcome::Ok => {
                let text = r.msg.unwrap_or_else(|| "OK".into());
                self.reply(Reply::ext(250, (2, 0, 0), text));
            }
            Outcome::DenyDisconnect => {
                self.reply(refuse_text(Reply::ext(521, (5, 5, 1), "Unrecognized command"), &r.msg));
                self.close();
            }
            Outcome::DenySoftDisconnect => {
                self.reply(refuse_text(Reply::ext(421, (4, 5, 1), "Unrecognized command"), &r.msg));
                self.close();
            }
            Outcome::Disconnect => self.close(),
            _ => self.error(refuse_text(Reply::ext(500, (5, 5, 1), "Unrecognized command"), &r.msg)),
        }
    }

    fn after_vrfy(&mut self, r: HookResult) {
        let hard = Reply::ext(550, (5, 7, 1), "Access Denied");
        let soft = Reply::ext(450, (4, 7, 1), "Lookup Failed");
        if self.deny(&r, hard, soft).is_some() {
            // Haraka resets the transaction after a refused VRFY.
            self.reset_txn();
            return;
        }
        let text = "Just try sending a mail and we'll see how it turns out...";
        match r.outcome {
            Outcome::Ok => self.reply(refuse_text(Reply::ext(250, (2, 1, 5), "User OK"), &r.msg)),
            _ => self.reply(Reply::ext(252, (2, 1, 5), text)),
        }
    }

    /// Haraka's noop_respond acts on DENY (500) and DENYDISCONNECT (500 + close) only.
    fn after_noop(&mut self, r: HookResult) {
        let hard = refuse_text(Reply::ext(500, (5, 5, 1), "Stop wasting my time"), &r.msg);
        match r.outcome {
            Outcome::Deny => self.reply(hard),
            Outcome::DenyDisconnect => {
                self.reply(hard);
                self.close();
            }
            Outcome::Disconnect => self.close(),
            _ => self.reply(Reply::ext(250, (2, 0, 0), "OK")),
        }
    }

    fn after_mail(&mut self, r: HookResult) {
        let sender = self.txn.as_ref().map(|t| t.sender()).unwrap_or_default();
        let hard = Reply::ext(550, (5, 7, 1), format!("sender {sender} denied"));
        let soft = Reply::ext(450, (4, 7, 1), format!("sender {sender} denied"));
        if self.deny(&r, hard, soft).is_some() {
            self.reset_txn();
            return;
        }
        self.reply(refuse_text(
            Reply::ext(250, (2, 1, 0), format!("sender {sender} OK")),
            &r.msg,
        ));
    }

    fn after_rcpt(&mut self, rcpt: Recipient, r: HookResult) {
        let a = format!("<{}>", rcpt.mailbox);
        let hard = Reply::ext(550, (5, 7, 1), format!("recipient {a} denied"));
        let soft = Reply::ext(450, (4, 7, 1), format!("recipient {a} denied"));
        if self.deny(&r, hard, soft).is_some() {
            return;
        }
        let accepted = matches!(r.outcome, Outcome::Ok) || self.conn.relaying;
        if accepted && !self.conn.relaying && rcpt.mailbox.has_routing() {
            // Never accept routing tricks from a client that may not relay, even for a local
            // domain: whoever delivers it next might honour them (docs/smtp.md, open relay).
            let text = format!("Sender-specified routing is not allowed: {a}");
            self.reply(Reply::ext(550, (5, 7, 1), text));
        } else if accepted {
            self.hook(Hook::RcptOk(rcpt.clone()), Then::RcptOk(rcpt, r.msg));
        } else {
            self.reply(Reply::ext(550, (5, 7, 1), format!("I cannot deliver mail for {a}")));
        }
    }

    fn after_rcpt_ok(&mut self, rcpt: Recipient, msg: Option<String>, r: HookResult) {
        let a = format!("<{}>", rcpt.mailbox);
        let hard = Reply::ext(550, (5, 7, 1), format!("recipient {a} denied"));
        let soft = Reply::ext(450, (4, 7, 1), format!("recipient {a} denied"));
        if self.deny(&r, hard, soft).is_some() {
            return;
        }
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        txn.rcpt_to.push(rcpt);
        // rcpt_ok's own message wins, then the rcpt hook's (Haraka's rcpt_ok_respond).
        let msg = r.msg.or(msg);
        self.reply(refuse_text(
            Reply::ext(250, (2, 1, 5), format!("recipient {a} OK")),
            &msg,
        ));
    }

    fn after_data(&mut self, bdat: Option<(u64, bool)>, r: HookResult) {
        let hard = Reply::ext(554, (5, 7, 1), "Message denied");
        let soft = Reply::ext(451, (4, 7, 1), "Message denied");
        let denied = match bdat {
            // A refused BDAT still has its chunk on the wire: skip it, then reply.
            Some((size, _)) if is_deny(r.outcome) => {
                let reply = if is_soft(r.outcome) { soft } else { hard };
                let reply = refuse_text(reply, &r.msg);
                let close = matches!(
                    r.outcome,
                    Outcome::DenyDisconnect | Outcome::DenySoftDisconnect | Outcome::Disconnect
                );
                self.reset_txn();
                if close {
                    if r.outcome != Outcome::Disconnect {
                        self.reply(reply);
                    }
                    self.close();
                } else {
                    self.phase = Phase::BdatSkip { remaining: size, reply };
                }
                return;
            }
            _ => self.deny(&r, hard, soft).is_some(),
        };
        if denied {
            self.reset_txn();
            return;
        }
        match bdat {
            None => {
                self.phase = Phase::Data;
                self.reply(Reply::plain(354, "go ahead, make my day"));
                self.begin_body(Mode::Data);
            }
            Some((size, last)) => {
                if let Some(t) = self.txn.as_mut() {
                    t.chunking = true;
                }
                let binary = !body_is_text(self.txn.as_ref());
                self.begin_body(if binary { Mode::Binary } else { Mode::Bdat });
                self.phase = Phase::Bdat { remaining: size, last };
            }
        }
    }

    fn after_max_data(&mut self, r: HookResult) {
        if r.outcome == Outcome::Disconnect {
            self.reset_txn();
            return self.close();
        }
        let reply = match r.outcome {
            Outcome::DenySoft | Outcome::DenySoftDisconnect => Reply::ext(450, (4, 3, 4), "Message too big!"),
            _ => Reply::ext(552, (5, 3, 4), "Message too big!"),
        };
        self.end_message(refuse_text(reply, &r.msg));
        if matches!(r.outcome, Outcome::DenyDisconnect | Outcome::DenySoftDisconnect) {
            self.close();
        }
    }

    fn after_data_post(&mut self, r: HookResult) {
        let hard = Reply::ext(550, (5, 7, 1), "Message denied");
        let soft = Reply::ext(450, (4, 7, 1), "Message denied temporarily");
        if self.deny(&r, hard, soft).is_some() {
            self.reset_txn();
            self.resume_commands();
            return;
        }
        let txn_relaying = self.txn.as_ref().is_some_and(|t| t.relaying);
        let hook = if self.conn.relaying || txn_relaying {
            Hook::QueueOutbound
        } else {
            Hook::Queue
        };
        self.hook(hook, Then::Queue);
    }

    fn after_queue(&mut self, r: HookResult) {
        let hard = Reply::ext(550, (5, 7, 1), "Message denied");
        let soft = Reply::ext(450, (4, 3, 0), "Message denied temporarily");
        if self.deny(&r, hard, soft).is_some() {
            self.reset_txn();
            self.resume_commands();
            return;
        }
        // Haraka answers 451 when no queue plugin takes the message; posta has one durable
        // queue and commits it itself (CONT), routing happens at delivery (DESIGN.md 4).
        if r.outcome == Outcome::Ok {
            // A queue plugin took the message (queue/discard and friends).
            let uuid = self.txn.as_ref().map(|t| t.uuid.clone()).unwrap_or_default();
            let text = format!("{} ({uuid})", r.msg.as_deref().unwrap_or("Message Queued"));
            self.spooled_drop();
            return self.hook(Hook::QueueOk(text.clone()), Then::QueueOk(text));
        }
        // Haraka runs pre_send_trans_email right before the queue files are written.
        self.hook(Hook::PreSendTransEmail, Then::Commit);
    }

    fn after_queue_ok(&mut self, text: String) {
        // queue_ok's return code is ignored (Haraka): the message is already taken.
        self.conn.msgs_accepted += 1;
        self.end_message(Reply::ext(250, (2, 0, 0), text));
    }

    fn resume_commands(&mut self) {
        if !matches!(self.phase, Phase::Closing) {
            self.phase = Phase::Command;
        }
    }

    // ----- SMTP AUTH (RFC 4954) ------------------------------------------------------

    /// AUTH may be used here: under TLS, or in clear from a private or loopback address
    /// when `plaintext_private` allows it (Haraka's auth/flat_file rule).
    fn auth_allowed(&self) -> bool {
        self.conn.tls || (self.cfg.auth.plaintext_private && self.conn.remote.is_private)
    }

    /// The EHLO keyword, when AUTH is offered on this connection.
    fn auth_capability(&self) -> Option<String> {
        let mechs = &self.cfg.auth.mechanisms;
        if mechs.is_empty() || !self.auth_allowed() {
            return None;
        }
        let names: Vec<&str> = mechs.iter().map(|m| m.as_str()).collect();
        Some(format!("AUTH {}", names.join(" ")))
    }

    /// MAIL on a submission port needs a relaying client (Haraka: ports 587 and 465).
    fn needs_auth(&self) -> bool {
        !self.conn.relaying && self.cfg.auth.submission_ports.contains(&self.conn.local.port())
    }

    fn cmd_auth(&mut self, args: &str) {
        if self.cfg.auth.mechanisms.is_empty() {
            // No auth plugin: AUTH is an unknown command, as in Haraka.
            self.conn.unrecognized_commands += 1;
            let h = Hook::UnrecognizedCommand {
                verb: "AUTH".into(),
                args: args.to_string(),
            };
            return self.hook(h, Then::Unrecognized);
        }
        if let Err(r) = self.auth_precheck() {
            return self.error(r);
        }
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let (Some(name), initial, None) = (words.next(), words.next(), words.next()) else {
            return self.error(Reply::ext(501, (5, 5, 4), "Syntax: AUTH mechanism [initial-response]"));
        };
        let Some(mech) = Mechanism::parse(name).filter(|m| self.cfg.auth.mechanisms.contains(m)) else {
            return self.error(Reply::ext(504, (5, 5, 4), "Unrecognized authentication type"));
        };
        let challenge = format!(
            "<{}.{}@{}>",
            rand::random::<u32>(),
            crate::hooks::state::now_ms() / 1000,
            self.cfg.me
        );
        self.sasl_step(Exchange::start(mech, initial, &challenge));
    }

    /// RFC 4954 4: after EHLO, once per session, outside a transaction, under TLS unless exempt.
    fn auth_precheck(&self) -> Result<(), Reply> {
        if !self.conn.esmtp() {
            return Err(Reply::ext(503, (5, 5, 1), "Use EHLO before AUTH"));
        }
        if let Some(r) = self.cfg.starttls.refuses(&self.conn) {
            return Err(r);
        }
        if self.conn.auth_user.is_some() {
            return Err(Reply::ext(503, (5, 5, 1), "Already authenticated"));
        }
        if self.txn.is_some() {
            return Err(Reply::ext(
                503,
                (5, 5, 1),
                "AUTH not permitted during a mail transaction",
            ));
        }
        if !self.auth_allowed() {
            return Err(Reply::ext(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        Ok(())
    }

    /// A SASL response line (bounded by the command line length).
    fn auth_phase(&mut self) -> Option<Action> {
        let line = match self.take_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Some(Action::NeedInput),
            Err(()) => {
                self.inbuf.clear();
                self.reply(Reply::ext(500, (5, 5, 6), "Authentication exchange line is too long"));
                self.close();
                return None;
            }
        };
        let Phase::Auth(x) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return None;
        };
        match std::str::from_utf8(&line) {
            Ok(text) => self.sasl_step(x.respond(text)),
            Err(_) => self.sasl_step(Err(SaslError::BadBase64)),
        }
        None
    }

    fn sasl_step(&mut self, step: Result<SaslStep, SaslError>) {
        match step {
            Ok(SaslStep::Challenge(x, text)) => {
                self.reply(Reply::plain(334, text));
                self.phase = Phase::Auth(x);
            }
            Ok(SaslStep::Done(attempt)) => {
                let then = Then::Auth(attempt.user.clone(), attempt.mechanism);
                self.hook(Hook::Auth(attempt), then);
            }
            Err(e) if e.is_failure() => self.auth_failed(None),
            Err(e) => self.error(e.reply()),
        }
    }

    fn after_auth(&mut self, user: String, mech: Mechanism, r: HookResult) {
        let soft = || refuse_text(Reply::ext(454, (4, 7, 0), "Temporary authentication failure"), &r.msg);
        match r.outcome {
            Outcome::Ok => self.auth_succeeded(user, mech),
            Outcome::DenySoft => {
                // Not counted as a failure (the backend is at fault), but slowed down like one:
                // a client must not retry a throttling upstream at full speed through us.
                self.reply(soft());
                let delay = self.cfg.auth.delay(self.conn.auth_failures.max(1));
                if !delay.is_zero() {
                    self.steps.push_front(Step::Act(Action::Pause(delay)));
                }
            }
            Outcome::DenySoftDisconnect => {
                self.reply(soft());
                self.close();
            }
            Outcome::Disconnect => self.close(),
            Outcome::DenyDisconnect => {
                self.auth_failed(r.msg);
                self.close();
            }
            // DENY, or no plugin vouched for the user.
            _ => self.auth_failed(r.msg),
        }
    }

    /// Haraka's auth_base: the client may relay and `notes.auth_user` names it.
    fn auth_succeeded(&mut self, user: String, mech: Mechanism) {
        self.conn.relaying = true;
        let notes = &mut self.conn.notes;
        notes.insert("auth_user".into(), user.clone().into());
        notes.insert("auth_method".into(), mech.as_str().into());
        self.conn.auth_user = Some(user);
        self.reply(Reply::ext(235, (2, 7, 0), "Authentication successful"));
    }

    /// A failed attempt: pause (growing with each failure), then 535, or 421 and close once
    /// `max_failures` is reached.
    fn auth_failed(&mut self, msg: Option<String>) {
        self.conn.auth_failures = self.conn.auth_failures.saturating_add(1);
        let n = self.conn.auth_failures;
        let delay = self.cfg.auth.delay(n);
        let max = self.cfg.auth.max_failures;
        if max > 0 && n >= max {
            self.reply(Reply::ext(
                421,
                (4, 7, 0),
                "Too many authentication failures, closing connection",
            ));
            self.close();
        } else {
            self.reply(refuse_text(sasl::failure_reply(), &msg));
        }
        if !delay.is_zero() {
            // Ahead of the disconnect hook and Close when closing: the 421 waits too.
            self.steps.push_front(Step::Act(Action::Pause(delay)));
        }
    }
    // ----- PROXY and XCLIENT ---------------------------------------------------------

    /// A PROXY header inside the session: a listed proxy's header is read by the driver
    /// before the session starts, so this one comes from a peer that may not send it (or is a
    /// second header). Haraka: `421 PROXY not allowed from <ip>` and close.
    fn cmd_proxy(&mut self) {
        self.reply(super::proxy::not_allowed_reply(self.conn.remote.ip));
        self.close();
    }

    /// `xclient.hosts` holds the client the session started with (after any PROXY header).
    /// Only explicitly listed hosts qualify: Haraka also always allows loopback.
    fn xclient_peer_allowed(&self) -> bool {
        let ip = self.conn.remote.ip.to_canonical();
        self.cfg
            .xclient_hosts
            .as_ref()
            .is_some_and(|hosts| hosts.iter().any(|n| n.contains(&ip)))
    }

    fn cmd_xclient(&mut self, args: &str) {
        if self.cfg.xclient_hosts.is_none() {
            return self.unrecognized("XCLIENT", args);
        }
        if self.txn.is_some() {
            return self.error(Reply::ext(503, (5, 5, 1), "Mail transaction in progress"));
        }
        if !self.xclient_allowed {
            return self.error(Reply::ext(550, (5, 7, 0), "Not authorized"));
        }
        match super::xclient::parse(args) {
            Ok(x) => self.restart_as(x),
            Err(r) => self.error(r),
        }
    }

    /// Become the session of the client XCLIENT names (Postfix: as if it had just connected):
    /// new uuid, relaying and capabilities cleared, connect hooks re-run, then a new banner.
    /// LOGIN counts as authenticated: relaying and `notes.auth_user` (Haraka's auth plugins).
    fn restart_as(&mut self, x: super::xclient::Xclient) {
        let Some(addr) = x.addr else {
            return self.error(Reply::ext(501, (5, 5, 4), "No valid IP address found"));
        };
        let peer = self.conn.remote.ip;
        let c = &mut self.conn;
        c.uuid = uuid::Uuid::new_v4().to_string().to_uppercase();
        c.remote = crate::hooks::state::Remote::new(std::net::SocketAddr::new(addr, x.port.unwrap_or(0)));
        c.remote.host = x.name.clone();
        c.local = std::net::SocketAddr::new(x.destaddr.unwrap_or(c.local.ip()), x.destport.unwrap_or(c.local.port()));
        let verb = x.proto.or(c.hello.as_ref().map(|h| h.verb)).unwrap_or(HelloVerb::Helo);
        c.hello = x.helo.clone().map(|host| Hello { verb, host });
        c.capabilities.clear();
        c.relaying = x.login.is_some();
        c.auth_user = x.login.clone();
        c.notes.remove("auth_user");
        c.notes.remove("auth_method");
        if let Some(user) = &x.login {
            c.notes.insert("auth_user".into(), user.clone().into());
        }
        c.notes.insert("xclient".into(), xclient_note(&x, peer));
        self.phase = Phase::EndOfData;
        self.hook(Hook::ConnectInit, Then::Ignore);
        match x.name {
            // The proxy looked the name up already.
            Some(_) => self.hook(Hook::Connect, Then::Connect),
            None => self.hook(Hook::LookupRdns, Then::LookupRdns),
        }
    }
}

/// `notes.xclient`: what the proxy said, and who the proxy is.
fn xclient_note(x: &super::xclient::Xclient, peer: std::net::IpAddr) -> serde_json::Value {
    serde_json::json!({
        "addr": x.addr.map(|a| a.to_string()),
        "port": x.port,
        "name": x.name,
        "helo": x.helo,
        "login": x.login,
        "destaddr": x.destaddr.map(|a| a.to_string()),
        "destport": x.destport,
        "proxy_ip": peer.to_string(),
    })
}

fn is_deny(o: Outcome) -> bool {
    matches!(
        o,
        Outcome::Deny | Outcome::DenySoft | Outcome::DenyDisconnect | Outcome::DenySoftDisconnect | Outcome::Disconnect
    )
}

fn is_soft(o: Outcome) -> bool {
    matches!(o, Outcome::DenySoft | Outcome::DenySoftDisconnect)
}

/// BINARYMIME bodies may hold any octet; the bare CR/LF policy is for text.
fn body_is_text(txn: Option<&Transaction>) -> bool {
    !txn.is_some_and(|t| t.mail_params.body == Some(command::Body::BinaryMime))
}

/// Connect-time refusals: 554 for hard ones, 421 for soft ones (Haraka).
fn refuse_reply(o: Outcome, hard: &str, soft: &str, msg: &Option<String>) -> Reply {
    let reply = if is_soft(o) {
        Reply::ext(421, (4, 7, 0), soft)
    } else {
        Reply::ext(554, (5, 7, 1), hard)
    };
    refuse_text(reply, msg)
}

fn refuse_text(reply: Reply, msg: &Option<String>) -> Reply {
    match msg {
        Some(m) if !m.is_empty() => reply.with_text(m),
        _ => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    /// What a scripted run of a session produced.
    struct Run {
        out: String,
        hooks: Vec<&'static str>,
        body: Vec<u8>,
        commits: usize,
        closed: bool,
    }

    fn session(cfg: SessionConfig) -> Session {
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let local: SocketAddr = "192.0.2.2:25".parse().unwrap();
        Session::new(Arc::new(cfg), Connection::new(peer, local))
    }

    /// Feed `input` in one piece, answer hooks with `answer`, commits with Ok.
    fn run_with(cfg: SessionConfig, input: &[u8], answer: impl Fn(&Hook) -> HookResult) -> Run {
        let mut s = session(cfg);
        let mut fed = false;
        let mut run = Run {
            out: String::new(),
            hooks: Vec::new(),
            body: Vec::new(),
            commits: 0,
            closed: false,
        };
        for _ in 0..10_000 {
            match s.next_action() {
                Action::Hook(h) => {
                    run.hooks.push(h.name().as_str());
                    let r = answer(&h);
                    s.hook_done(r);
                }
                Action::Body(b) => run.body.extend_from_slice(&b),
                Action::Commit => {
                    run.commits += 1;
                    s.commit_done(Ok("q".into()));
                }
                Action::Discard => run.body.clear(),
                Action::Pause(_) => {}
                Action::NeedInput if !fed => {
                    fed = true;
                    s.receive(input);
                }
                Action::NeedInput => s.peer_closed(),
                Action::StartTls { .. } => s.peer_closed(),
                Action::Close => {
                    run.closed = true;
                    break;
                }
            }
        }
        run.out = String::from_utf8_lossy(&s.take_output()).into_owned();
        run
    }

    fn tls_cfg() -> SessionConfig {
        let mut cfg = SessionConfig::defaults("mx.test");
        cfg.starttls.enabled = true;
        cfg
    }

    /// What a STARTTLS conversation produced: replies before and after the handshake.
    struct TlsRun {
        before: String,
        after: String,
        discarded: Option<usize>,
        body: Vec<u8>,
    }

    /// Feed `plain` until STARTTLS, pretend the handshake worked, then feed `secure`.
    fn run_tls(cfg: SessionConfig, plain: &[u8], secure: &[u8]) -> TlsRun {
        let mut s = session(cfg);
        let mut inputs = vec![plain, secure].into_iter();
        let mut r = TlsRun {
            before: String::new(),
            after: String::new(),
            discarded: None,
            body: Vec::new(),
        };
        for _ in 0..10_000 {
            match s.next_action() {
                Action::Hook(h) => s.hook_done(match h {
                    Hook::Rcpt(_) => HookResult::new(Outcome::Ok),
                    _ => HookResult::CONT,
                }),
                Action::Body(b) => r.body.extend_from_slice(&b),
                Action::Commit => s.commit_done(Ok("q".into())),
                Action::Discard => r.body.clear(),
                Action::Pause(_) => {}
                Action::StartTls { discarded } => {
                    r.discarded = Some(discarded);
                    r.before = String::from_utf8_lossy(&s.take_output()).into_owned();
                    let info = TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "TLS_AES_128_GCM_SHA256".into(),
                        ..TlsInfo::default()
                    };
                    s.tls_started(info);
                    // Only what the client sends after the handshake counts from here on.
                    inputs = vec![secure].into_iter();
                }
                Action::NeedInput => match inputs.next() {
                    Some(i) => s.receive(i),
                    None => s.peer_closed(),
                },
                Action::Close => break,
            }
        }
        let out = String::from_utf8_lossy(&s.take_output()).into_owned();
        if r.discarded.is_some() {
            r.after = out;
        } else {
            r.before = out;
        }
        r
    }

    #[test]
    fn starttls_advertised_only_when_offered() {
        let r = run_tls(tls_cfg(), b"EHLO c\r\n", b"");
        assert!(r.before.contains("250-DSN\r\n250 STARTTLS\r\n"), "{}", r.before);
        let r = run_tls(SessionConfig::defaults("mx.test"), b"EHLO c\r\nSTARTTLS\r\n", b"");
        assert!(!r.before.contains("STARTTLS"));
        assert_eq!(codes(&r.before), vec![220, 250, 500]);
        let mut by_port = tls_cfg();
        by_port.starttls.no_starttls_ports = vec![25];
        let mut by_host = tls_cfg();
        by_host.starttls.no_tls_hosts = vec!["192.0.2.0/24".parse().unwrap()];
        for cfg in [by_port, by_host] {
            let r = run_tls(cfg, b"EHLO c\r\nSTARTTLS\r\n", b"");
            assert!(!r.before.contains("STARTTLS\r\n"), "{}", r.before);
            assert_eq!(codes(&r.before), vec![220, 250, 500]);
        }
    }

    #[test]
    fn starttls_discards_pipelined_input_and_resets() {
        let r = run_tls(
            tls_cfg(),
            b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n",
            b"MAIL FROM:<a@b.test>\r\nEHLO c\r\n",
        );
        assert_eq!(codes(&r.before), vec![220, 250, 220]);
        assert!(r.before.ends_with("220 2.0.0 Go ahead\r\n"));
        assert_eq!(r.discarded, Some(b"RSET\r\nMAIL FROM:<evil@x>\r\n".len()));
        // EHLO is forgotten: MAIL needs a new EHLO, and STARTTLS is no longer offered.
        assert_eq!(codes(&r.after), vec![503, 250]);
        assert!(!r.after.contains("STARTTLS"), "{}", r.after);
    }

    #[test]
    fn starttls_refusals() {
        let r = run_tls(
            tls_cfg(),
            b"EHLO c\r\nSTARTTLS now\r\nSTARTTLS\r\n",
            b"EHLO c\r\nSTARTTLS\r\n",
        );
        assert_eq!(codes(&r.before), vec![220, 250, 501, 220]);
        assert_eq!(codes(&r.after), vec![250, 503]);
        assert!(r.after.contains("503 5.5.1 Already using TLS"));
        let r = run_tls(
            tls_cfg(),
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\nRSET\r\nSTARTTLS\r\n",
            b"",
        );
        assert_eq!(codes(&r.before), vec![220, 250, 250, 503, 250, 220]);
    }

    #[test]
    fn received_header_says_esmtps() {
        let r = run_tls(
            tls_cfg(),
            b"EHLO c\r\nSTARTTLS\r\n",
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\nhi\r\n.\r\n",
        );
        assert_eq!(codes(&r.after), vec![250, 250, 250, 354, 250]);
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains("with ESMTPS (TLSv1.3 TLS_AES_128_GCM_SHA256) id "),
            "{body}"
        );
    }

    fn run(input: &[u8]) -> Run {
        run_with(SessionConfig::defaults("mx.test"), input, |h| match h {
            Hook::Rcpt(_) => HookResult::new(Outcome::Ok),
            _ => HookResult::CONT,
        })
    }

    fn codes(out: &str) -> Vec<u16> {
        out.lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }

    #[test]
    fn full_transaction() {
        let r = run(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n");
        assert_eq!(codes(&r.out), vec![220, 250, 250, 250, 354, 250, 221]);
        assert_eq!(r.commits, 1);
        assert!(r.closed);
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.starts_with("Received: from c.test ([192.0.2.1])\r\n\tby mx.test (posta/"));
        assert!(body.ends_with("\r\nhi\r\n"));
        assert_eq!(
            r.hooks,
            vec![
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
                "pre_send_trans_email",
                "queue_ok",
                "reset_transaction",
                "quit",
                "disconnect"
            ]
        );
    }

    #[test]
    fn sequencing_errors() {
        let r = run(b"MAIL FROM:<a@b.test>\r\nHELO c.test\r\nRCPT TO:<x@mx.test>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
        assert_eq!(codes(&r.out), vec![220, 503, 250, 503, 503, 250, 503, 503]);
        assert_eq!(r.commits, 0);
    }

    #[test]
    fn too_many_errors_closes() {
        let r = run(&b"FOO\r\n".repeat(12));
        let c = codes(&r.out);
        assert_eq!(c.iter().filter(|&&x| x == 500).count(), 10);
        assert_eq!(c.last(), Some(&421));
        assert!(r.closed);
    }

    #[test]
    fn smuggled_mail_is_data() {
        let r = run(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\nx\n.\nMAIL FROM:<e@vil>\r\nRCPT TO:<y@mx.test>\r\nDATA\r\nevil\r\n.\r\n");
        assert_eq!(codes(&r.out), vec![220, 250, 250, 250, 354, 250]);
        assert_eq!(r.commits, 1);
        assert!(String::from_utf8_lossy(&r.body).contains("MAIL FROM:<e@vil>"));
    }

    #[test]
    fn bare_lf_reject_policy() {
        let mut cfg = SessionConfig::defaults("mx.test");
        cfg.bare_eol = BareEol::Reject;
        let r = run_with(
            cfg,
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\na\nb\r\n.\r\nNOOP\r\n",
            |h| match h {
                Hook::Rcpt(_) => HookResult::new(Outcome::Ok),
                _ => HookResult::CONT,
            },
        );
        assert_eq!(codes(&r.out), vec![220, 250, 250, 250, 354, 550, 250]);
        assert_eq!(r.commits, 0);
        assert!(r.body.is_empty(), "body discarded");
    }

    #[test]
    fn size_limit_and_recipients() {
        let mut cfg = SessionConfig::defaults("mx.test");
        cfg.max_bytes = 10;
        cfg.max_recipients = 1;
        let r = run_with(
            cfg,
            b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=11\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@mx.test>\r\nRCPT TO:<y@mx.test>\r\nDATA\r\n0123456789abc\r\n.\r\nRSET\r\n",
            |h| match h {
                Hook::Rcpt(_) => HookResult::new(Outcome::Ok),
                _ => HookResult::CONT,
            },
        );
        assert_eq!(codes(&r.out), vec![220, 250, 552, 250, 250, 452, 354, 552, 250]);
        assert_eq!(r.commits, 0);
    }

    #[test]
    fn bdat_chunks_and_skip() {
        let r = run(b"EHLO c\r\nBDAT 3\r\nabcMAIL FROM:<a@b.test>\r\nRCPT TO:<x@mx.test>\r\nBDAT 4\r\nab\r\nBDAT 3 LAST\r\ncd\nNOOP\r\n");
        assert_eq!(codes(&r.out), vec![220, 250, 503, 250, 250, 250, 250, 250]);
        assert_eq!(r.commits, 1);
        assert!(
            r.body.ends_with(b"ab\r\ncd\r\n"),
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
    }

    #[test]
    fn connect_deny_loops_until_quit() {
        let r = run_with(
            SessionConfig::defaults("mx.test"),
            b"EHLO c\r\nMAIL FROM:<>\r\nQUIT\r\n",
            |h| match h {
                Hook::Connect => HookResult::with_msg(Outcome::Deny, "go away"),
                _ => HookResult::CONT,
            },
        );
        assert_eq!(r.out, "554 5.7.1 go away\r\n554 5.7.1 go away\r\n554 5.7.1 go away\r\n221 2.0.0 mx.test closing connection. Have a jolly good day.\r\n");
        assert!(r.closed);
    }

    #[test]
    fn hook_disconnects() {
        for (outcome, code) in [(Outcome::DenyDisconnect, 550), (Outcome::DenySoftDisconnect, 450)] {
            let r = run_with(
                SessionConfig::defaults("mx.test"),
                b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\n",
                |h| match h {
                    Hook::Mail(..) => HookResult::new(outcome),
                    _ => HookResult::CONT,
                },
            );
            assert_eq!(codes(&r.out), vec![220, 250, code]);
            assert!(r.closed);
        }
    }

    #[test]
    fn overlong_command_line() {
        let mut line = vec![b'A'; 600];
        line.extend_from_slice(b"\r\n");
        let r = run(&line);
        assert_eq!(codes(&r.out), vec![220, 521]);
        assert!(r.closed);
    }

    #[test]
    fn skipped_hooks_answer_cont() {
        let mut cfg = SessionConfig::defaults("mx.test");
        cfg.hooks = HookSet::default();
        let r = run_with(
            cfg,
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@mx.test>\r\n",
            |_| unreachable!(),
        );
        assert_eq!(codes(&r.out), vec![220, 250, 250, 550]);
        assert!(r.hooks.is_empty());
    }
}

#[cfg(test)]
#[path = "session_auth_tests.rs"]
mod auth_tests;
