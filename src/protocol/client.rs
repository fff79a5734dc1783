//! Client side of SMTP and LMTP for outbound delivery, as a sans-IO state machine.
//!
//! The driver (a RemoteMx session) owns the socket. It feeds server bytes in with
//! [`ClientSession::receive`] and asks what to do next with [`ClientSession::next_action`]:
//!
//! - [`ClientAction::Send`]: write these bytes.
//! - [`ClientAction::NeedInput`]: read more bytes (everything sent so far must be written first).
//! - [`ClientAction::StartTls`]: upgrade the socket, then call [`ClientSession::tls_done`].
//! - [`ClientAction::Ready`]: connected and idle. Call [`ClientSession::start_message`] or
//!   [`ClientSession::quit`], or park the session for reuse while still reading (a server may
//!   send `421` on an idle connection).
//! - [`ClientAction::SendBody`]: write the message body and its terminator ([`BodyTail`],
//!   [`data_terminator`]), then call [`ClientSession::body_sent`].
//! - [`ClientAction::MessageDone`]: per-recipient results of the message in flight.
//! - [`ClientAction::Closed`]: close the socket; the session is over.
//!
//! posta departs from Haraka's outbound client (haraka-behaviour.md 5.6-5.10) on purpose: it
//! pipelines (RFC 2920), reuses a connection for several messages, sends SIZE, BODY and DSN
//! parameters, stays in clear on the same connection when STARTTLS is refused by reply (RFC 3207
//! 4.1), defers instead of bouncing on an unparsable reply, and refuses server bytes sent between
//! the STARTTLS `220` and the handshake (response injection).

use std::collections::VecDeque;
use std::fmt;
use std::fmt::Write as _;

use bytes::{Buf, BytesMut};
use thiserror::Error;

use super::reply::Enhanced;

/// Default bound on one reply, all lines included.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Bound on one reply line, CRLF included. RFC 5321 4.5.3.1.5 allows 512; servers send more.
pub const MAX_LINE_BYTES: usize = 4096;

// ----- replies ---------------------------------------------------------------------------

/// One reply from the server, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// The three-digit reply code.
    pub code: u16,
    /// The RFC 3463 code of the first line, when it carries one of the reply's class.
    pub enhanced: Option<Enhanced>,
    /// Text of each line, without code, separator, enhanced code or CRLF.
    pub lines: Vec<String>,
}

impl ClientReply {
    /// A one-line reply (also used for failures posta reports itself).
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Self {
        ClientReply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// The first digit of the code.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// All lines joined with a space (Haraka's `response` for the `delivered` hook).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// The enhanced code, or `class.0.0` when the server sent none (DSN `Status:`).
    pub fn status(&self) -> Enhanced {
        self.enhanced.unwrap_or(Enhanced((self.class() % 10) as u8, 0, 0))
    }

    /// `code enhanced text`, for a DSN `Diagnostic-Code: smtp;` field and for logs.
    pub fn diagnostic(&self) -> String {
        match self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text()),
            None => format!("{} {}", self.code, self.text()),
        }
    }
}

impl fmt::Display for ClientReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic())
    }
}

/// Why bytes from the server are not a reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line without LF within [`MAX_LINE_BYTES`].
    #[error("reply line longer than {0} bytes")]
    LineTooLong(usize),
    /// A reply longer than the configured bound.
    #[error("reply longer than {0} bytes")]
    ReplyTooLong(usize),
    /// A line that does not start with `[2-5]dd` followed by space, dash or end of line.
    #[error("malformed reply line: \"{0}\"")]
    Malformed(String),
    /// The lines of one multi-line reply carry different codes.
    #[error("reply code changed within a multi-line reply ({first} then {then})")]
    MixedCodes { first: u16, then: u16 },
}

/// Parse one complete reply at the start of `buf`: the reply and the bytes it used, or
/// `Ok(None)` when more bytes are needed. Bounded by [`MAX_REPLY_BYTES`] and [`MAX_LINE_BYTES`].
pub fn parse_reply(buf: &[u8]) -> Result<Option<(ClientReply, usize)>, ReplyError> {
    let mut reader = ReplyReader::new(MAX_REPLY_BYTES);
    match reader.feed(buf)? {
        (used, Some(reply)) => Ok(Some((reply, used))),
        (_, None) => Ok(None),
    }
}

/// Incremental reply parser: consumes complete lines as they arrive, so a reply dripped in
/// one byte at a time costs linear work. After an error the reader must not be reused.
#[derive(Debug, Clone)]
pub struct ReplyReader {
    max_reply: usize,
    code: Option<u16>,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
    /// Bytes of the current reply consumed so far.
    taken: usize,
    /// Bytes of the pending partial line already searched for LF.
    scanned: usize,
}

impl ReplyReader {
    /// A reader that refuses replies longer than `max_reply` bytes.
    pub fn new(max_reply: usize) -> Self {
        ReplyReader {
            max_reply,
            code: None,
            enhanced: None,
            lines: Vec::new(),
            taken: 0,
            scanned: 0,
        }
    }

    /// Consume complete lines from `buf` until a reply ends. Returns the bytes consumed (the
    /// caller drops them before the next call) and the reply, if its last line was seen.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, Option<ClientReply>), ReplyError> {
        let mut pos = 0;
        while let Some(len) = self.next_line(&buf[pos..])? {
            let line = &buf[pos..pos + len];
            pos += len;
            if let Some(reply) = self.take_line(line)? {
                return Ok((pos, Some(reply)));
            }
        }
        Ok((pos, None))
    }

    /// Length of the next complete line (LF included), or `None` if it is not all there yet.
    fn next_line(&mut self, rest: &[u8]) -> Result<Option<usize>, ReplyError> {
        let limit = rest.len().min(MAX_LINE_BYTES);
        let from = self.scanned.min(limit);
        match memchr::memchr(b'\n', &rest[from..limit]) {
            Some(i) => {
                let len = from + i + 1;
                self.scanned = 0;
                self.taken += len;
                if self.taken > self.max_reply {
                    return Err(ReplyError::ReplyTooLong(self.max_reply));
                }
                Ok(Some(len))
            }
            None if rest.len() >= MAX_LINE_BYTES => Err(ReplyError::LineTooLong(MAX_LINE_BYTES)),
            None if self.taken + rest.len() > self.max_reply => Err(ReplyError::ReplyTooLong(self.max_reply)),
            None => {
                self.scanned = limit;
                Ok(None)
            }
        }
    }

    /// Add one line to the reply being read; the reply when it was the last line.
    fn take_line(&mut self, raw: &[u8]) -> Result<Option<ClientReply>, ReplyError> {
        let line = parse_line(raw)?;
        match self.code {
            Some(first) if first != line.code => {
                return Err(ReplyError::MixedCodes { first, then: line.code });
            }
            Some(_) => {}
            None => {
                self.code = Some(line.code);
                self.enhanced = line.enhanced;
            }
        }
        self.lines.push(line.text);
        if !line.last {
            return Ok(None);
        }
        self.code = None;
        self.taken = 0;
        Ok(Some(ClientReply {
            code: line.code,
            enhanced: self.enhanced.take(),
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// One reply line, taken apart.
struct Line {
    code: u16,
    last: bool,
    enhanced: Option<Enhanced>,
    text: String,
}

/// `^([2-5]\d\d)([ -]|$)(x.y.z )?text` on a line with its LF (and CR, if any).
fn parse_line(raw: &[u8]) -> Result<Line, ReplyError> {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed = || ReplyError::Malformed(line[..line.len().min(80)].escape_ascii().to_string());
    let code = match line {
        [a @ b'2'..=b'5', b, c, ..] if b.is_ascii_digit() && c.is_ascii_digit() => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(malformed()),
    };
    // RFC 5321 4.2: the last line may be the bare code.
    let (last, rest) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(malformed()),
    };
    let (enhanced, rest) = match parse_enhanced(rest, line[0] - b'0') {
        Some((e, used)) => (Some(e), &rest[used..]),
        None => (None, rest),
    };
    Ok(Line {
        code,
        last,
        enhanced,
        text: clean_text(rest),
    })
}

/// An RFC 3463 code at the start of `s`, and the bytes it uses with its trailing space. Only a
/// code of the reply's own class counts (RFC 3463 2); anything else stays part of the text.
fn parse_enhanced(s: &[u8], class: u8) -> Option<(Enhanced, usize)> {
    if s.first() != Some(&(b'0' + class)) || s.get(1) != Some(&b'.') {
        return None;
    }
    let (subject, n1) = short_number(&s[2..])?;
    let dot = 2 + n1;
    if s.get(dot) != Some(&b'.') {
        return None;
    }
    let (detail, n2) = short_number(&s[dot + 1..])?;
    let end = dot + 1 + n2;
    let e = Enhanced(class, subject, detail);
    match s.get(end) {
        None => Some((e, end)),
        Some(b' ') => Some((e, end + 1)),
        Some(_) => None,
    }
}

/// One to three digits.
fn short_number(s: &[u8]) -> Option<(u16, usize)> {
    let n = s.iter().take(4).take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 3 {
        return None;
    }
    let value = s[..n].iter().fold(0u16, |v, b| v * 10 + u16::from(b - b'0'));
    Some((value, n))
}

/// Reply text as a string. Control characters become spaces: the text ends up in logs and in
/// DSN header fields, where a stray CR must not start a new line.
fn clean_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

// ----- capabilities ----------------------------------------------------------------------

/// What the server announced in its EHLO/LHLO reply. All false after HELO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered EHLO or LHLO (not HELO).
    pub esmtp: bool,
    /// RFC 2920: MAIL, RCPT and DATA go out in one write.
    pub pipelining: bool,
    /// `SIZE` offered; `Some(0)` when it came without a (valid) limit.
    pub size: Option<u64>,
    /// RFC 6152: `BODY=8BITMIME` is understood.
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// SASL mechanisms, upper case.
    pub auth: Vec<String>,
    /// RFC 3461: RET, ENVID, NOTIFY and ORCPT are understood.
    pub dsn: bool,
    /// RFC 3030 BDAT (parsed, not used yet).
    pub chunking: bool,
    /// RFC 2034: replies carry enhanced status codes.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Read the keywords from an EHLO/LHLO reply (its first line is the greeting).
    pub fn from_ehlo(reply: &ClientReply) -> Self {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            caps.add(line);
        }
        caps
    }

    /// True when `mechanism` (upper case) is among the AUTH mechanisms.
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m == mechanism)
    }

    fn add(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { return };
        // `AUTH=LOGIN PLAIN` is the pre-RFC 4954 form some servers still send.
        let (keyword, inline) = match first.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (first, None),
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => self.pipelining = true,
            "SIZE" => self.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => self.eight_bit_mime = true,
            "SMTPUTF8" => self.smtputf8 = true,
            "STARTTLS" => self.starttls = true,
            "DSN" => self.dsn = true,
            "CHUNKING" => self.chunking = true,
            "ENHANCEDSTATUSCODES" => self.enhanced_status_codes = true,
            "AUTH" => self.add_auth(inline.into_iter().chain(words)),
            _ => {}
        }
    }

    fn add_auth<'a>(&mut self, mechanisms: impl Iterator<Item = &'a str>) {
        for m in mechanisms.filter(|m| !m.is_empty()) {
            let m = m.to_ascii_uppercase();
            if !self.auth.contains(&m) {
                self.auth.push(m);
            }
        }
    }
}

// ----- envelope and results --------------------------------------------------------------

/// DSN `RET=` (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnRet {
    /// Return the whole message in a failure DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// DSN `NOTIFY=` keywords (RFC 3461 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnNotify {
    /// No DSN at all (stands alone).
    Never,
    /// A DSN on delivery.
    Success,
    /// A DSN on failure.
    Failure,
    /// A DSN on delay.
    Delay,
}

impl DsnNotify {
    fn keyword(self) -> &'static str {
        match self {
            DsnNotify::Never => "NEVER",
            DsnNotify::Success => "SUCCESS",
            DsnNotify::Failure => "FAILURE",
            DsnNotify::Delay => "DELAY",
        }
    }
}

/// One recipient of an outbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    /// Address without angle brackets.
    pub address: String,
    /// DSN NOTIFY keywords; empty for none.
    pub notify: Vec<DsnNotify>,
    /// The original recipient address (without `rfc822;`), sent as DSN ORCPT.
    pub orcpt: Option<String>,
}

impl EnvelopeRecipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Self {
        EnvelopeRecipient {
            address: address.into(),
            notify: Vec::new(),
            orcpt: None,
        }
    }
}

/// What one message needs from the connection: sender, recipients and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender address without angle brackets; `None` for the null sender `<>`.
    pub mail_from: Option<String>,
    /// Recipients in RCPT order; results come back in the same order.
    pub recipients: Vec<EnvelopeRecipient>,
    /// DSN `RET=`, sent when the server offers DSN.
    pub ret: Option<DsnRet>,
    /// DSN `ENVID=` (plain text; posta xtext-encodes it), sent when the server offers DSN.
    pub envid: Option<String>,
    /// Body size in octets, for `SIZE=`.
    pub size: u64,
    /// The message needs SMTPUTF8 (non-ASCII addresses are detected as well).
    pub smtputf8: bool,
    /// The body has 8-bit data: `BODY=8BITMIME` when the server offers it.
    pub eight_bit: bool,
}

impl Envelope {
    /// An envelope without parameters.
    pub fn new<S: Into<String>>(mail_from: Option<String>, recipients: impl IntoIterator<Item = S>) -> Self {
        Envelope {
            mail_from,
            recipients: recipients.into_iter().map(EnvelopeRecipient::new).collect(),
            ret: None,
            envid: None,
            size: 0,
            smtputf8: false,
            eight_bit: false,
        }
    }

    /// True when MAIL must carry SMTPUTF8 (RFC 6531 3.4).
    pub fn needs_smtputf8(&self) -> bool {
        self.smtputf8
            || self.mail_from.as_deref().is_some_and(|a| !a.is_ascii())
            || self.recipients.iter().any(|r| !r.address.is_ascii())
    }
}

/// The fate of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered,
    /// Try again later (4xx, connection trouble).
    TempFail,
    /// Bounce (5xx).
    PermFail,
}

/// The result for one recipient, with the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// The recipient address, as in the envelope.
    pub address: String,
    /// Delivered, TempFail or PermFail.
    pub outcome: RcptOutcome,
    /// The reply that decided the outcome (its `status()` and `diagnostic()` feed a DSN).
    pub reply: ClientReply,
    /// False when posta made the reply up (no usable answer from the server): a DSN then has a
    /// `Status:` but no `Diagnostic-Code:`.
    pub remote: bool,
}

impl RcptResult {
    fn from_reply(address: &str, reply: ClientReply, remote: bool) -> Self {
        let outcome = match reply.class() {
            2 => RcptOutcome::Delivered,
            5 => RcptOutcome::PermFail,
            _ => RcptOutcome::TempFail,
        };
        RcptResult {
            address: address.to_string(),
            outcome,
            reply,
            remote,
        }
    }
}

/// The results of one message, one per envelope recipient in envelope order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageResult {
    /// One result per envelope recipient, in envelope order.
    pub recipients: Vec<RcptResult>,
}

impl MessageResult {
    /// The recipients the server took.
    pub fn delivered(&self) -> impl Iterator<Item = &RcptResult> {
        self.recipients.iter().filter(|r| r.outcome == RcptOutcome::Delivered)
    }

    /// True when every recipient was delivered.
    pub fn all_delivered(&self) -> bool {
        self.recipients.iter().all(|r| r.outcome == RcptOutcome::Delivered)
    }
}

// ----- errors, actions, config -----------------------------------------------------------

/// Why a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The greeting was not 220.
    #[error("greeting refused: {0}")]
    Greeting(ClientReply),
    /// EHLO (and HELO) or LHLO was refused.
    #[error("hello refused: {0}")]
    Hello(ClientReply),
    /// TLS is required and the server does not offer STARTTLS.
    #[error("No TLS available but required by configuration")]
    TlsNotOffered,
    /// TLS is required and STARTTLS was refused.
    #[error("STARTTLS refused: {0}")]
    StartTlsRefused(ClientReply),
    /// The driver reported a failed handshake; retry in clear unless TLS is required.
    #[error("TLS handshake failed")]
    TlsHandshake,
    /// The server sent bytes between its STARTTLS 220 and the handshake.
    #[error("data received before the TLS handshake")]
    TlsInjection,
    /// AUTH was refused (535 and other 5xx look permanent: wrong credentials).
    #[error("authentication failed: {0}")]
    AuthFailed(ClientReply),
    /// A reply that makes no sense where it came.
    #[error("unexpected reply to {command}: {reply}")]
    Unexpected { command: &'static str, reply: ClientReply },
    /// Bytes that are not a reply.
    #[error("bad reply: {0}")]
    BadReply(#[from] ReplyError),
    /// 421: the server is closing the connection.
    #[error("server closing: {0}")]
    ServiceClosing(ClientReply),
    /// The server sent more than a reply's worth of bytes when none was due.
    #[error("too much data from the server")]
    TooMuchData,
    /// The server closed the connection.
    #[error("connection closed by the server")]
    PeerClosed,
    /// The driver's timer ran out.
    #[error("timed out waiting for the server")]
    Timeout,
    /// [`ClientSession::quit`] was called in the middle of an exchange.
    #[error("delivery aborted")]
    Aborted,
}

impl ClientError {
    /// True when retrying the same server with the same settings is pointless (rejected
    /// credentials). Everything else is worth another MX or a later retry.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::AuthFailed(r) if r.class() == 5)
    }

    /// True when the driver should reconnect without STARTTLS (Haraka's behaviour after a
    /// failed upgrade), provided TLS is not required.
    pub fn retry_without_tls(&self) -> bool {
        matches!(self, ClientError::TlsHandshake | ClientError::TlsInjection)
    }

    /// The server's reply behind the failure, if there is one.
    pub fn reply(&self) -> Option<&ClientReply> {
        match self {
            ClientError::Greeting(r)
            | ClientError::Hello(r)
            | ClientError::StartTlsRefused(r)
            | ClientError::AuthFailed(r)
            | ClientError::ServiceClosing(r)
            | ClientError::Unexpected { reply: r, .. } => Some(r),
            _ => None,
        }
    }

    /// The reply given to recipients of a message in flight: the server's 421, or a temporary
    /// failure posta makes up. Haraka bounces on an unparsable reply (5.5.1); posta defers,
    /// because a garbled reply says nothing about the recipient and another attempt (or MX) may
    /// well succeed.
    fn recipient_reply(&self) -> (ClientReply, bool) {
        let status = match self {
            ClientError::ServiceClosing(r) => return (r.clone(), true),
            // 4.5.0: other protocol status; 4.4.2: bad connection (RFC 3463).
            ClientError::BadReply(_) | ClientError::Unexpected { .. } => Enhanced(4, 5, 0),
            _ => Enhanced(4, 4, 2),
        };
        let text = format!("delivery interrupted: {self}");
        (ClientReply::new(451, Some(status), text), false)
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// QUIT after [`ClientSession::quit`].
    Quit,
    /// The connection failed.
    Failed(ClientError),
}

/// The next thing the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Write these bytes to the server.
    Send(Vec<u8>),
    /// Run the TLS handshake on the socket, then call [`ClientSession::tls_done`].
    StartTls,
    /// Read from the server (or wait for the driver's own step: TLS, body).
    NeedInput,
    /// Idle: [`ClientSession::start_message`], [`ClientSession::quit`], or park for reuse.
    Ready,
    /// Write the body (dot-stuffed, CRLF) and its terminator, then call
    /// [`ClientSession::body_sent`].
    SendBody,
    /// The message in flight is settled.
    MessageDone(MessageResult),
    /// Close the socket. Repeated on every later call.
    Closed(CloseReason),
}

/// How to talk to one server.
#[derive(Clone)]
pub struct ClientConfig {
    /// Name for EHLO/HELO/LHLO.
    pub helo: String,
    /// Speak LMTP (LHLO, one reply per recipient after the data).
    pub lmtp: bool,
    /// Use STARTTLS when offered.
    pub want_tls: bool,
    /// Fail (temporarily) rather than send in clear.
    pub require_tls: bool,
    /// User and password for AUTH PLAIN or LOGIN, when offered.
    pub auth: Option<(String, String)>,
    /// Bound on one reply.
    pub max_reply_bytes: usize,
}

impl ClientConfig {
    /// Plain SMTP, opportunistic TLS, no AUTH.
    pub fn new(helo: impl Into<String>) -> Self {
        ClientConfig {
            helo: helo.into(),
            lmtp: false,
            want_tls: true,
            require_tls: false,
            auth: None,
            max_reply_bytes: MAX_REPLY_BYTES,
        }
    }
}

/// Hides the password.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("helo", &self.helo)
            .field("lmtp", &self.lmtp)
            .field("want_tls", &self.want_tls)
            .field("require_tls", &self.require_tls)
            .field("auth_user", &self.auth.as_ref().map(|(u, _)| u))
            .field("max_reply_bytes", &self.max_reply_bytes)
            .finish()
    }
}

// ----- the session -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Ehlo,
    Helo,
    Lhlo,
}

/// Which AUTH reply is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    Plain,
    Login,
    LoginUser,
    LoginPass,
}

#[derive(Debug)]
enum Phase {
    Greeting,
    Hello(Verb),
    StartTls,
    /// The driver is upgrading the socket.
    Handshake,
    Auth(AuthStep),
    Ready,
    /// Replies to RSET/MAIL/RCPT/DATA are due.
    Envelope,
    /// The driver is writing the body.
    Body,
    /// Replies to the end of data are due.
    AfterDot,
    Quit,
    Closed(CloseReason),
}

/// An envelope command whose reply is due.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
}

impl Expect {
    fn command(self) -> &'static str {
        match self {
            Expect::Rset => "RSET",
            Expect::Mail => "MAIL",
            Expect::Rcpt(_) => "RCPT",
            Expect::Data => "DATA",
        }
    }
}

/// What a reply to an envelope command leads to.
enum Step {
    Continue,
    Body,
    BlankDot,
    Done,
    Unexpected(&'static str, ClientReply),
}

/// The message in flight.
#[derive(Debug)]
struct Txn {
    addresses: Vec<String>,
    results: Vec<Option<RcptResult>>,
    /// Recipients the server accepted, in RCPT order (LMTP replies follow this order).
    accepted: Vec<usize>,
    /// A MAIL or DATA failure: it applies to every recipient without a result.
    refused: Option<ClientReply>,
    unsent: VecDeque<(Expect, Vec<u8>)>,
    awaiting: VecDeque<Expect>,
    /// LMTP replies received after the data.
    lmtp_replies: usize,
    /// Only `.` was sent after a 354 nobody could use.
    blank: bool,
}

impl Txn {
    fn new(env: &Envelope) -> Self {
        let n = env.recipients.len();
        Txn {
            addresses: env.recipients.iter().map(|r| r.address.clone()).collect(),
            results: vec![None; n],
            accepted: Vec::new(),
            refused: None,
            unsent: VecDeque::new(),
            awaiting: VecDeque::new(),
            lmtp_replies: 0,
            blank: false,
        }
    }

    /// Record a result for recipient `i`, unless it has one.
    fn set(&mut self, i: usize, reply: ClientReply, remote: bool) {
        if let (Some(slot @ None), Some(addr)) = (self.results.get_mut(i), self.addresses.get(i)) {
            *slot = Some(RcptResult::from_reply(addr, reply, remote));
        }
    }

    /// True when the remaining commands must not be sent (RFC 5321 3.3: no DATA without an
    /// accepted recipient; nothing after a failed MAIL).
    fn stalled(&self) -> bool {
        let data_next = matches!(self.unsent.front(), Some((Expect::Data, _)));
        self.refused.is_some() || (data_next && self.accepted.is_empty())
    }

    /// Move the next command (or, when pipelining, all of them) to `awaiting`; their bytes.
    fn next_batch(&mut self, pipelining: bool) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((expect, line)) = self.unsent.pop_front() {
            out.extend_from_slice(&line);
            self.awaiting.push_back(expect);
            if !pipelining {
                break;
            }
        }
        out
    }

    /// Apply the reply to one envelope command.
    fn on_reply(&mut self, expect: Expect, r: ClientReply, lmtp: bool) -> Step {
        match (expect, r.class()) {
            (Expect::Rset | Expect::Mail, 2) => Step::Continue,
            (Expect::Mail, 4 | 5) => {
                self.refused = Some(r);
                Step::Continue
            }
            // RFC 2920 3.1: after a failed MAIL the pipelined RCPT replies mean nothing.
            (Expect::Rcpt(_), _) if self.refused.is_some() => Step::Continue,
            (Expect::Rcpt(i), 2) => {
                self.accepted.push(i);
                Step::Continue
            }
            (Expect::Rcpt(i), 4 | 5) => {
                self.set(i, r, true);
                Step::Continue
            }
            (Expect::Data, _) if r.code == 354 => self.on_354(r, lmtp),
            (Expect::Data, 4 | 5) => {
                self.refused.get_or_insert(r);
                Step::Done
            }
            (e, _) => Step::Unexpected(e.command(), r),
        }
    }

    fn on_354(&mut self, r: ClientReply, lmtp: bool) -> Step {
        if self.refused.is_none() && !self.accepted.is_empty() {
            Step::Body
        } else if lmtp {
            // RFC 2033 4.2: DATA must fail when no RCPT succeeded, and it is unclear how many
            // replies would follow an empty message. Close rather than guess.
            Step::Unexpected("DATA", r)
        } else {
            // RFC 2920 3.1: the server took DATA although nothing can be delivered; end the
            // data at once and ignore the reply.
            Step::BlankDot
        }
    }

    /// The final results: recipients without one take the MAIL/DATA failure, else `fallback`.
    fn settle(mut self, fallback: Option<(ClientReply, bool)>) -> MessageResult {
        let fallback = fallback.unwrap_or_else(|| {
            let reply = ClientReply::new(451, Some(Enhanced(4, 5, 0)), "no reply for this recipient");
            (reply, false)
        });
        for i in 0..self.results.len() {
            match self.refused.clone() {
                Some(r) => self.set(i, r, true),
                None => self.set(i, fallback.0.clone(), fallback.1),
            }
        }
        MessageResult {
            recipients: self.results.into_iter().flatten().collect(),
        }
    }
}

/// One client connection to an SMTP or LMTP server, for one or more messages in sequence.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    phase: Phase,
    inbuf: BytesMut,
    reader: ReplyReader,
    actions: VecDeque<ClientAction>,
    caps: Capabilities,
    tls: bool,
    authenticated: bool,
    txn: Option<Txn>,
    /// The last transaction did not end with the reply to its data: RSET before the next.
    dirty: bool,
    /// The server closed its side.
    eof: bool,
}

impl ClientSession {
    /// A session on a freshly connected socket; the greeting is awaited first.
    pub fn new(mut cfg: ClientConfig) -> Self {
        // The name goes on a command line: no CR/LF may smuggle a second command.
        cfg.helo.retain(|c| !c.is_control());
        let reader = ReplyReader::new(cfg.max_reply_bytes);
        ClientSession {
            cfg,
            phase: Phase::Greeting,
            inbuf: BytesMut::new(),
            reader,
            actions: VecDeque::new(),
            caps: Capabilities::default(),
            tls: false,
            authenticated: false,
            txn: None,
            dirty: false,
            eof: false,
        }
    }

    /// Bytes from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Closed(_)) {
            self.inbuf.extend_from_slice(bytes);
        }
    }

    /// The server closed the connection (read returned 0 or the socket failed).
    pub fn peer_closed(&mut self) {
        self.eof = true;
    }

    /// The driver's timer for the current wait ran out.
    pub fn timed_out(&mut self) {
        match self.phase {
            Phase::Quit => self.close(CloseReason::Quit),
            _ => self.fail(ClientError::Timeout),
        }
    }

    /// The result of the handshake asked for by [`ClientAction::StartTls`].
    pub fn tls_done(&mut self, ok: bool) {
        if !matches!(self.phase, Phase::Handshake) {
            return;
        }
        if !ok {
            return self.fail(ClientError::TlsHandshake);
        }
        if !self.inbuf.is_empty() {
            return self.fail(ClientError::TlsInjection);
        }
        // RFC 3207 4.2: forget what was learnt in clear and ask again.
        self.tls = true;
        self.caps = Capabilities::default();
        self.reader = ReplyReader::new(self.cfg.max_reply_bytes);
        self.hello(self.first_verb());
    }

    /// Start a message. Only after [`ClientAction::Ready`]; otherwise the envelope comes back.
    pub fn start_message(&mut self, env: Envelope) -> Result<(), Envelope> {
        if !matches!(self.phase, Phase::Ready) {
            return Err(env);
        }
        let mut txn = Txn::new(&env);
        match self.refuse_locally(&env) {
            Some(reply) => (0..env.recipients.len()).for_each(|i| txn.set(i, reply.clone(), false)),
            None => self.plan(&mut txn, &env),
        }
        if txn.unsent.is_empty() {
            self.actions.push_back(ClientAction::MessageDone(txn.settle(None)));
            return Ok(());
        }
        let bytes = txn.next_batch(self.caps.pipelining);
        self.send(bytes);
        self.txn = Some(txn);
        self.dirty = true;
        self.phase = Phase::Envelope;
        Ok(())
    }

    /// The body and its terminator asked for by [`ClientAction::SendBody`] were written.
    pub fn body_sent(&mut self) {
        if matches!(self.phase, Phase::Body) {
            self.phase = Phase::AfterDot;
        }
    }

    /// Say goodbye: QUIT when idle. In the middle of an exchange the session is dropped at once
    /// (a message in flight gets TempFail), since QUIT there could land inside the data.
    pub fn quit(&mut self) {
        match self.phase {
            Phase::Ready => {
                self.send_line("QUIT");
                self.phase = Phase::Quit;
            }
            Phase::Quit | Phase::Closed(_) => {}
            _ => self.fail(ClientError::Aborted),
        }
    }

    /// The next thing to do.
    pub fn next_action(&mut self) -> ClientAction {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return action;
            }
            if let Some(action) = self.advance() {
                return action;
            }
        }
    }

    /// What the server offers (empty before EHLO, after HELO, and right after STARTTLS).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The connection is under TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// AUTH succeeded.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Idle and able to take a message.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// The session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    // ----- driving ---------------------------------------------------------------------

    /// Handle buffered input; `Some` when the driver must act.
    fn advance(&mut self) -> Option<ClientAction> {
        match &self.phase {
            Phase::Closed(reason) => return Some(ClientAction::Closed(reason.clone())),
            Phase::Handshake | Phase::Body => return self.wait_for_driver(),
            _ => {}
        }
        match self.read_reply() {
            Ok(Some(reply)) => self.on_reply(reply),
            Ok(None) if self.eof => self.on_eof(),
            Ok(None) if self.is_ready() => return Some(ClientAction::Ready),
            Ok(None) => return Some(ClientAction::NeedInput),
            Err(e) => self.fail(ClientError::BadReply(e)),
        }
        None
    }

    /// While the driver does TLS or writes the body, server bytes wait; not too many of them.
    fn wait_for_driver(&mut self) -> Option<ClientAction> {
        if self.inbuf.len() > self.cfg.max_reply_bytes {
            self.fail(ClientError::TooMuchData);
            return None;
        }
        if self.eof && matches!(self.phase, Phase::Body) {
            self.fail(ClientError::PeerClosed);
            return None;
        }
        Some(ClientAction::NeedInput)
    }

    fn read_reply(&mut self) -> Result<Option<ClientReply>, ReplyError> {
        let (used, reply) = self.reader.feed(&self.inbuf)?;
        self.inbuf.advance(used);
        Ok(reply)
    }

    fn on_eof(&mut self) {
        match self.phase {
            Phase::Quit => self.close(CloseReason::Quit),
            _ => self.fail(ClientError::PeerClosed),
        }
    }

    fn on_reply(&mut self, r: ClientReply) {
        // RFC 5321 3.8: 421 may answer any command; the server is going away.
        if r.code == 421 && !matches!(self.phase, Phase::Greeting | Phase::Quit) {
            return self.fail(ClientError::ServiceClosing(r));
        }
        match self.phase {
            Phase::Greeting => self.on_greeting(r),
            Phase::Hello(verb) => self.on_hello(verb, r),
            Phase::StartTls => self.on_starttls(r),
            Phase::Auth(step) => self.on_auth(step, r),
            Phase::Envelope => self.on_envelope(r),
            Phase::AfterDot => self.on_dot(r),
            Phase::Quit => self.close(CloseReason::Quit),
            _ => self.unexpected("no command", r),
        }
    }

    // ----- connection setup ------------------------------------------------------------

    fn first_verb(&self) -> Verb {
        if self.cfg.lmtp {
            Verb::Lhlo
        } else {
            Verb::Ehlo
        }
    }

    fn hello(&mut self, verb: Verb) {
        let name = match verb {
            Verb::Ehlo => "EHLO",
            Verb::Helo => "HELO",
            Verb::Lhlo => "LHLO",
        };
        let line = format!("{name} {}", self.cfg.helo);
        self.send_line(&line);
        self.phase = Phase::Hello(verb);
    }

    fn on_greeting(&mut self, r: ClientReply) {
        if r.code == 220 {
            self.hello(self.first_verb());
        } else {
            // RFC 5321 3.1: after a 554 greeting the client sends QUIT.
            self.fail_politely(ClientError::Greeting(r));
        }
    }

    fn on_hello(&mut self, verb: Verb, r: ClientReply) {
        match r.class() {
            2 => {
                self.caps = match verb {
                    Verb::Helo => Capabilities::default(),
                    _ => Capabilities::from_ehlo(&r),
                };
                self.after_hello();
            }
            // Haraka 5.6: EHLO 5xx falls back to HELO. LMTP has no fallback (RFC 2033 4.1).
            5 if verb == Verb::Ehlo => self.hello(Verb::Helo),
            _ => self.fail_politely(ClientError::Hello(r)),
        }
    }

    fn after_hello(&mut self) {
        let offered = self.caps.starttls && !self.tls;
        if offered && (self.cfg.want_tls || self.cfg.require_tls) {
            self.send_line("STARTTLS");
            self.phase = Phase::StartTls;
        } else if !self.tls && self.cfg.require_tls {
            self.fail_politely(ClientError::TlsNotOffered);
        } else {
            self.start_auth();
        }
    }

    fn on_starttls(&mut self, r: ClientReply) {
        if r.code == 220 {
            // Bytes already here were sent in clear but would be read as if under TLS.
            if !self.inbuf.is_empty() {
                return self.fail(ClientError::TlsInjection);
            }
            self.phase = Phase::Handshake;
            self.actions.push_back(ClientAction::StartTls);
        } else if self.cfg.require_tls {
            self.fail_politely(ClientError::StartTlsRefused(r));
        } else {
            // RFC 3207 4.1: after a refusal the session goes on in clear.
            self.start_auth();
        }
    }

    fn start_auth(&mut self) {
        let Some((user, pass)) = self.cfg.auth.clone().filter(|_| !self.authenticated) else {
            self.phase = Phase::Ready;
            return;
        };
        if self.caps.offers_auth("PLAIN") {
            let token = base64(format!("\0{user}\0{pass}").as_bytes());
            self.send_line(&format!("AUTH PLAIN {token}"));
            self.phase = Phase::Auth(AuthStep::Plain);
        } else if self.caps.offers_auth("LOGIN") {
            self.send_line("AUTH LOGIN");
            self.phase = Phase::Auth(AuthStep::Login);
        } else {
            // Haraka 5.8: no usable mechanism, send without AUTH. See is_authenticated().
            self.phase = Phase::Ready;
        }
    }

    fn on_auth(&mut self, step: AuthStep, r: ClientReply) {
        let (user, pass) = self.cfg.auth.clone().unwrap_or_default();
        match (step, r.code) {
            (_, 235) => {
                self.authenticated = true;
                self.phase = Phase::Ready;
            }
            // The prompts' text is not checked: servers word them differently.
            (AuthStep::Login, 334) => {
                self.send_line(&base64(user.as_bytes()));
                self.phase = Phase::Auth(AuthStep::LoginUser);
            }
            (AuthStep::LoginUser, 334) => {
                self.send_line(&base64(pass.as_bytes()));
                self.phase = Phase::Auth(AuthStep::LoginPass);
            }
            _ if r.class() >= 4 => self.fail_politely(ClientError::AuthFailed(r)),
            _ => self.unexpected("AUTH", r),
        }
    }

    // ----- messages --------------------------------------------------------------------

    /// A reply that settles the whole message before any command is sent.
    fn refuse_locally(&self, env: &Envelope) -> Option<ClientReply> {
        let refuse =
            |code, e: (u8, u16, u16), text: String| Some(ClientReply::new(code, Some(Enhanced(e.0, e.1, e.2)), text));
        if !env.mail_from.as_deref().is_none_or(safe_address) {
            return refuse(553, (5, 1, 7), "sender address has forbidden characters".into());
        }
        if env.needs_smtputf8() && !self.caps.smtputf8 {
            // RFC 6531 3.2: no downgrade; the message cannot go to this server.
            return refuse(
                553,
                (5, 6, 7),
                "message needs SMTPUTF8, which the server does not offer".into(),
            );
        }
        match self.caps.size {
            // RFC 1870 6.1: do not send what the server announced it will refuse.
            Some(max) if max > 0 && env.size > max => refuse(
                552,
                (5, 3, 4),
                format!("message size {} exceeds the server's limit {max}", env.size),
            ),
            _ => None,
        }
    }

    /// Queue RSET (if needed), MAIL, one RCPT per usable recipient, DATA.
    fn plan(&self, txn: &mut Txn, env: &Envelope) {
        let utf8 = env.needs_smtputf8();
        let mut rcpts = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.address.is_empty() || !safe_address(&r.address) {
                let reply = ClientReply::new(
                    553,
                    Some(Enhanced(5, 1, 3)),
                    "recipient address has forbidden characters",
                );
                txn.set(i, reply, false);
            } else {
                rcpts.push((Expect::Rcpt(i), rcpt_command(r, &self.caps)));
            }
        }
        if rcpts.is_empty() {
            return;
        }
        if self.dirty {
            txn.unsent.push_back((Expect::Rset, b"RSET\r\n".to_vec()));
        }
        txn.unsent
            .push_back((Expect::Mail, mail_command(env, &self.caps, utf8)));
        txn.unsent.extend(rcpts);
        txn.unsent.push_back((Expect::Data, b"DATA\r\n".to_vec()));
    }

    fn on_envelope(&mut self, r: ClientReply) {
        let lmtp = self.cfg.lmtp;
        let step = match self.txn.as_mut() {
            Some(txn) => match txn.awaiting.pop_front() {
                Some(expect) => txn.on_reply(expect, r, lmtp),
                None => Step::Unexpected("no command", r),
            },
            None => Step::Unexpected("no command", r),
        };
        match step {
            Step::Continue => self.continue_envelope(),
            Step::Body => {
                self.phase = Phase::Body;
                self.actions.push_back(ClientAction::SendBody);
            }
            Step::BlankDot => self.blank_dot(),
            Step::Done => self.finish(false),
            Step::Unexpected(command, r) => self.unexpected(command, r),
        }
    }

    /// All due replies are in: send the next command, or end a transaction that cannot go on.
    fn continue_envelope(&mut self) {
        let pipelining = self.caps.pipelining;
        let Some(txn) = self.txn.as_mut() else { return };
        if !txn.awaiting.is_empty() {
            return;
        }
        if txn.stalled() {
            txn.unsent.clear();
        }
        if txn.unsent.is_empty() {
            return self.finish(false);
        }
        let bytes = txn.next_batch(pipelining);
        self.send(bytes);
    }

    fn blank_dot(&mut self) {
        if let Some(txn) = self.txn.as_mut() {
            txn.blank = true;
        }
        self.send_line(".");
        self.phase = Phase::AfterDot;
    }

    /// A reply after the data: one for all (SMTP) or one per accepted recipient (LMTP).
    fn on_dot(&mut self, r: ClientReply) {
        if r.class() == 3 {
            return self.unexpected("end of data", r);
        }
        let lmtp = self.cfg.lmtp;
        let Some(txn) = self.txn.as_mut() else {
            return self.unexpected("no command", r);
        };
        if !txn.blank && lmtp {
            if let Some(i) = txn.accepted.get(txn.lmtp_replies).copied() {
                txn.set(i, r, true);
            }
            txn.lmtp_replies += 1;
            if txn.lmtp_replies < txn.accepted.len() {
                return;
            }
        } else if !txn.blank {
            for i in txn.accepted.clone() {
                txn.set(i, r.clone(), true);
            }
        }
        self.finish(true);
    }

    /// End the message in flight and go back to Ready.
    fn finish(&mut self, clean: bool) {
        if let Some(txn) = self.txn.take() {
            self.actions.push_back(ClientAction::MessageDone(txn.settle(None)));
        }
        self.dirty = !clean;
        self.phase = Phase::Ready;
    }

    // ----- output and failure ----------------------------------------------------------

    /// Queue bytes to write; consecutive sends become one write.
    fn send(&mut self, bytes: Vec<u8>) {
        match self.actions.back_mut() {
            Some(ClientAction::Send(pending)) => pending.extend_from_slice(&bytes),
            _ => self.actions.push_back(ClientAction::Send(bytes)),
        }
    }

    fn send_line(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.send(bytes);
    }

    fn unexpected(&mut self, command: &'static str, reply: ClientReply) {
        self.fail(ClientError::Unexpected { command, reply });
    }

    /// Fail after a refusal the protocol allows: the exchange is in step, so QUIT first.
    fn fail_politely(&mut self, err: ClientError) {
        self.send_line("QUIT");
        self.fail(err);
    }

    /// Mark the connection failed; a message in flight gets its results.
    fn fail(&mut self, err: ClientError) {
        if matches!(self.phase, Phase::Closed(_)) {
            return;
        }
        if let Some(txn) = self.txn.take() {
            let fallback = err.recipient_reply();
            self.actions
                .push_back(ClientAction::MessageDone(txn.settle(Some(fallback))));
        }
        self.close(CloseReason::Failed(err));
    }

    fn close(&mut self, reason: CloseReason) {
        self.inbuf.clear();
        self.phase = Phase::Closed(reason);
    }
}

// ----- command lines ---------------------------------------------------------------------

/// An address that cannot break the command line it goes on.
fn safe_address(a: &str) -> bool {
    !a.chars().any(|c| c.is_control() || c == '<' || c == '>')
}

fn mail_command(env: &Envelope, caps: &Capabilities, utf8: bool) -> Vec<u8> {
    let mut cmd = format!("MAIL FROM:<{}>", env.mail_from.as_deref().unwrap_or(""));
    if caps.size.is_some() {
        let _ = write!(cmd, " SIZE={}", env.size);
    }
    if env.eight_bit && caps.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        cmd.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        match env.ret {
            Some(DsnRet::Full) => cmd.push_str(" RET=FULL"),
            Some(DsnRet::Hdrs) => cmd.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(id) = &env.envid {
            let _ = write!(cmd, " ENVID={}", xtext(id));
        }
    }
    cmd.push_str("\r\n");
    cmd.into_bytes()
}

fn rcpt_command(r: &EnvelopeRecipient, caps: &Capabilities) -> Vec<u8> {
    let mut cmd = format!("RCPT TO:<{}>", r.address);
    if caps.dsn {
        if r.notify.contains(&DsnNotify::Never) {
            // RFC 3461 4.1: NEVER stands alone.
            cmd.push_str(" NOTIFY=NEVER");
        } else if !r.notify.is_empty() {
            let words: Vec<&str> = r.notify.iter().map(|n| n.keyword()).collect();
            let _ = write!(cmd, " NOTIFY={}", words.join(","));
        }
        if let Some(orcpt) = &r.orcpt {
            let _ = write!(cmd, " ORCPT={}", orcpt_value(orcpt));
        }
    }
    cmd.push_str("\r\n");
    cmd.into_bytes()
}

/// RFC 3461 4: xtext, `+HH` for `+`, `=`, and anything outside `!`..`~`.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// ORCPT value: `rfc822;xtext` for ASCII, else RFC 6533 `utf-8;` with utf-8-addr-xtext, which is
/// valid whether or not SMTPUTF8 is in use.
fn orcpt_value(addr: &str) -> String {
    if addr.is_ascii() {
        return format!("rfc822;{}", xtext(addr));
    }
    let mut out = String::from("utf-8;");
    for c in addr.chars() {
        if matches!(c, '!'..='~') && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 4), for AUTH.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ----- end of data -----------------------------------------------------------------------

/// The bytes that end the data after a body whose last bytes are `tail` (only the last two
/// matter): `.\r\n` after CRLF or an empty body, else CRLF first so the dot starts a line.
pub fn data_terminator(tail: &[u8]) -> &'static [u8] {
    match tail {
        [] | [.., b'\r', b'\n'] => b".\r\n",
        [.., b'\r'] => b"\n.\r\n",
        _ => b"\r\n.\r\n",
    }
}

/// Append the terminator to a body held whole in memory.
pub fn append_data_terminator(body: &mut Vec<u8>) {
    let end = data_terminator(body);
    body.extend_from_slice(end);
}

/// Remembers the last bytes of a body streamed in chunks, to pick its terminator.
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyTail {
    last: [u8; 2],
    len: usize,
}

impl BodyTail {
    /// Note a chunk just written.
    pub fn update(&mut self, chunk: &[u8]) {
        for &b in &chunk[chunk.len().saturating_sub(2)..] {
            self.last = [self.last[1], b];
            self.len = (self.len + 1).min(2);
        }
    }

    /// What to write after the last chunk.
    pub fn terminator(&self) -> &'static [u8] {
        data_terminator(&self.last[2 - self.len..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one round of `next_action` calls produced, up to the first action that needs the
    /// driver (NeedInput, Ready, StartTls, SendBody, Closed).
    #[derive(Debug, Default)]
    struct Out {
        sent: String,
        writes: usize,
        done: Vec<MessageResult>,
        last: Option<ClientAction>,
    }

    fn pump(s: &mut ClientSession) -> Out {
        let mut out = Out::default();
        for _ in 0..1000 {
            match s.next_action() {
                ClientAction::Send(b) => {
                    out.sent.push_str(&String::from_utf8_lossy(&b));
                    out.writes += 1;
                }
                ClientAction::MessageDone(r) => out.done.push(r),
                a => {
                    out.last = Some(a);
                    return out;
                }
            }
        }
        panic!("next_action never asked the driver for anything");
    }

    fn say(s: &mut ClientSession, input: &str) -> Out {
        s.receive(input.as_bytes());
        pump(s)
    }

    fn cfg() -> ClientConfig {
        ClientConfig::new("out.test")
    }

    const EHLO_PLAIN: &str = "250-mx.test Hello\r\n250 SIZE 1000\r\n";
    const EHLO_PIPE: &str = "250-mx.test Hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n";

    /// A session that got its greeting and `ehlo` as the EHLO reply.
    fn connect(cfg: ClientConfig, ehlo: &str) -> ClientSession {
        let mut s = ClientSession::new(cfg);
        assert_eq!(pump(&mut s).last, Some(ClientAction::NeedInput));
        let out = say(&mut s, "220 mx.test ESMTP\r\n");
        assert_eq!(out.sent, "EHLO out.test\r\n");
        s.receive(ehlo.as_bytes());
        s
    }

    fn ready(cfg: ClientConfig, ehlo: &str) -> ClientSession {
        let mut s = connect(cfg, ehlo);
        assert_eq!(pump(&mut s).last, Some(ClientAction::Ready));
        s
    }

    fn env(rcpts: &[&str]) -> Envelope {
        let mut e = Envelope::new(Some("a@b.test".into()), rcpts.iter().copied());
        e.size = 10;
        e
    }

    fn outcomes(r: &MessageResult) -> Vec<(RcptOutcome, u16)> {
        r.recipients.iter().map(|r| (r.outcome, r.reply.code)).collect()
    }

    fn failed(out: &Out) -> &ClientError {
        match &out.last {
            Some(ClientAction::Closed(CloseReason::Failed(e))) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// Deliver `e` to completion with the given server replies, checking nothing in between.
    fn deliver(s: &mut ClientSession, e: Envelope, replies: &str, after_dot: &str) -> MessageResult {
        s.start_message(e).unwrap();
        pump(s);
        let out = say(s, replies);
        assert_eq!(out.last, Some(ClientAction::SendBody), "{out:?}");
        s.body_sent();
        let mut out = say(s, after_dot);
        assert_eq!(out.last, Some(ClientAction::Ready));
        out.done.pop().unwrap()
    }

    // ----- replies -------------------------------------------------------------------

    #[test]
    fn parses_single_and_multi_line_replies() {
        let (r, n) = parse_reply(b"250 2.1.0 sender ok\r\nextra").unwrap().unwrap();
        assert_eq!((r.code, r.enhanced, n), (250, Some(Enhanced(2, 1, 0)), 21));
        assert_eq!(r.lines, vec!["sender ok"]);
        let wire = b"550-5.1.1 no such\r\n550-5.1.1 user\r\n550 5.1.1 here\r\n";
        let (r, n) = parse_reply(wire).unwrap().unwrap();
        assert_eq!((r.code, r.enhanced, n), (550, Some(Enhanced(5, 1, 1)), wire.len()));
        assert_eq!(r.text(), "no such user here");
        assert_eq!(r.diagnostic(), "550 5.1.1 no such user here");
    }

    #[test]
    fn reply_details() {
        // Bare code, bare LF, enhanced code of another class stays text, enhanced code alone.
        let (r, _) = parse_reply(b"250\r\n").unwrap().unwrap();
        assert_eq!((r.code, r.lines.clone()), (250, vec![String::new()]));
        let (r, _) = parse_reply(b"354 go ahead\n").unwrap().unwrap();
        assert_eq!(r.text(), "go ahead");
        let (r, _) = parse_reply(b"250 5.1.1 odd\r\n").unwrap().unwrap();
        assert_eq!((r.enhanced, r.text()), (None, "5.1.1 odd".to_string()));
        assert_eq!(r.status(), Enhanced(2, 0, 0));
        let (r, _) = parse_reply(b"451 4.7.1\r\n").unwrap().unwrap();
        assert_eq!((r.enhanced, r.text()), (Some(Enhanced(4, 7, 1)), String::new()));
        let (r, _) = parse_reply(b"550 5.1.1234 x\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced, None);
        let (r, _) = parse_reply(b"550 a\rb\xff\r\n").unwrap().unwrap();
        assert_eq!(r.text(), "a b\u{fffd}");
    }

    #[test]
    fn incomplete_replies_at_every_byte() {
        let wire = b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse_reply(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_reply(wire).unwrap().unwrap().1, wire.len());
    }

    #[test]
    fn malformed_replies() {
        for bad in [
            &b"hello\r\n"[..],
            b"250x\r\n",
            b"25\r\n",
            b"650 no\r\n",
            b"2a0 x\r\n",
            b"\r\n",
            b" 250 x\r\n",
        ] {
            assert!(matches!(parse_reply(bad), Err(ReplyError::Malformed(_))), "{bad:?}");
        }
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::MixedCodes { first: 250, then: 251 })
        );
        let long = vec![b'2'; MAX_LINE_BYTES];
        assert_eq!(parse_reply(&long), Err(ReplyError::LineTooLong(MAX_LINE_BYTES)));
        let mut big = Vec::new();
        while big.len() <= MAX_REPLY_BYTES {
            big.extend_from_slice(b"250-0123456789012345678901234567890123456789\r\n");
        }
        assert_eq!(parse_reply(&big), Err(ReplyError::ReplyTooLong(MAX_REPLY_BYTES)));
    }

    #[test]
    fn reader_is_incremental() {
        let mut reader = ReplyReader::new(100);
        let mut buf = b"250-a\r\n250".to_vec();
        let (used, r) = reader.feed(&buf).unwrap();
        assert_eq!((used, r), (7, None));
        buf.drain(..used);
        buf.extend_from_slice(b" b\r\n");
        let (used, r) = reader.feed(&buf).unwrap();
        assert_eq!((used, r.unwrap().lines), (7, vec!["a".to_string(), "b".to_string()]));
    }

    #[test]
    fn capabilities() {
        let wire = "250-mx.test greets you\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n\
                    250-SMTPUTF8\r\n250-STARTTLS\r\n250-AUTH LOGIN plain\r\n250-AUTH=CRAM-MD5 LOGIN\r\n\
                    250-DSN\r\n250-CHUNKING\r\n250-X-UNKNOWN\r\n250 ENHANCEDSTATUSCODES\r\n";
        let (r, _) = parse_reply(wire.as_bytes()).unwrap().unwrap();
        let c = Capabilities::from_ehlo(&r);
        let want = Capabilities {
            esmtp: true,
            pipelining: true,
            size: Some(35_882_577),
            eight_bit_mime: true,
            smtputf8: true,
            starttls: true,
            auth: vec!["LOGIN".into(), "PLAIN".into(), "CRAM-MD5".into()],
            dsn: true,
            chunking: true,
            enhanced_status_codes: true,
        };
        assert_eq!(c, want);
        let (r, _) = parse_reply(b"250-mx\r\n250 SIZE\r\n").unwrap().unwrap();
        assert_eq!(Capabilities::from_ehlo(&r).size, Some(0));
    }

    // ----- conversations -------------------------------------------------------------

    #[test]
    fn conversation_without_pipelining() {
        let mut s = ready(cfg(), EHLO_PLAIN);
        assert!(!s.capabilities().pipelining);
        let mut e = env(&["x@c.test", "y@c.test"]);
        e.eight_bit = true; // 8BITMIME not offered: no BODY=
        s.start_message(e).unwrap();
        let steps = [
            ("", "MAIL FROM:<a@b.test> SIZE=10\r\n"),
            ("250 2.1.0 ok\r\n", "RCPT TO:<x@c.test>\r\n"),
            ("250 2.1.5 ok\r\n", "RCPT TO:<y@c.test>\r\n"),
            ("250 2.1.5 ok\r\n", "DATA\r\n"),
        ];
        for (reply, cmd) in steps {
            let out = say(&mut s, reply);
            assert_eq!((out.sent.as_str(), out.last), (cmd, Some(ClientAction::NeedInput)));
        }
        assert_eq!(say(&mut s, "354 go\r\n").last, Some(ClientAction::SendBody));
        assert_eq!(pump(&mut s).last, Some(ClientAction::NeedInput));
        s.body_sent();
        let out = say(&mut s, "250 2.0.0 Ok: queued as ABC\r\n");
        assert_eq!(out.last, Some(ClientAction::Ready));
        let r = &out.done[0];
        assert!(r.all_delivered());
        assert_eq!(r.recipients[1].address, "y@c.test");
        assert_eq!(r.recipients[1].reply.text(), "Ok: queued as ABC");
        assert!(r.recipients[1].remote);
        s.quit();
        assert_eq!(pump(&mut s).sent, "QUIT\r\n");
        assert_eq!(
            say(&mut s, "221 bye\r\n").last,
            Some(ClientAction::Closed(CloseReason::Quit))
        );
        assert!(s.is_closed());
    }

    #[test]
    fn conversation_with_pipelining() {
        let mut s = ready(cfg(), EHLO_PIPE);
        let mut e = env(&["x@c.test", "y@c.test"]);
        e.eight_bit = true;
        s.start_message(e).unwrap();
        let out = pump(&mut s);
        assert_eq!(out.writes, 1);
        assert_eq!(
            out.sent,
            "MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<x@c.test>\r\nRCPT TO:<y@c.test>\r\nDATA\r\n"
        );
        let out = say(&mut s, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!((out.sent.as_str(), out.last), ("", Some(ClientAction::SendBody)));
        s.body_sent();
        let out = say(&mut s, "250 queued\r\n");
        assert!(out.done[0].all_delivered());
        s.quit();
        assert_eq!(pump(&mut s).sent, "QUIT\r\n");
        s.peer_closed();
        assert_eq!(pump(&mut s).last, Some(ClientAction::Closed(CloseReason::Quit)));
    }

    #[test]
    fn pipelined_replies_split_at_every_byte() {
        let replies = "250 ok\r\n250-fine\r\n250 ok\r\n354 go\r\n";
        for cut in 0..replies.len() {
            let mut s = ready(cfg(), EHLO_PIPE);
            s.start_message(env(&["x@c.test"])).unwrap();
            pump(&mut s);
            let first = say(&mut s, &replies[..cut]);
            assert_eq!(first.last, Some(ClientAction::NeedInput), "cut {cut}");
            assert_eq!(
                say(&mut s, &replies[cut..]).last,
                Some(ClientAction::SendBody),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn ehlo_reply_split_at_every_byte() {
        let whole = ready(cfg(), EHLO_PIPE).capabilities().clone();
        for cut in 0..EHLO_PIPE.len() {
            let mut s = connect(cfg(), "");
            assert_eq!(say(&mut s, &EHLO_PIPE[..cut]).last, Some(ClientAction::NeedInput));
            assert_eq!(
                say(&mut s, &EHLO_PIPE[cut..]).last,
                Some(ClientAction::Ready),
                "cut {cut}"
            );
            assert_eq!(s.capabilities(), &whole);
        }
    }

    #[test]
    fn helo_fallback() {
        let mut s = connect(cfg(), "502 5.5.2 what?\r\n");
        assert_eq!(pump(&mut s).sent, "HELO out.test\r\n");
        assert_eq!(say(&mut s, "250 mx.test\r\n").last, Some(ClientAction::Ready));
        assert!(!s.capabilities().esmtp);
        let mut e = env(&["x@c.test"]);
        e.eight_bit = true;
        e.ret = Some(DsnRet::Hdrs);
        s.start_message(e).unwrap();
        assert_eq!(pump(&mut s).sent, "MAIL FROM:<a@b.test>\r\n");
        // HELO refused as well: the connection fails.
        let mut s = connect(cfg(), "500 no\r\n");
        pump(&mut s);
        let out = say(&mut s, "554 go away\r\n");
        assert_eq!(out.sent, "QUIT\r\n");
        assert!(matches!(failed(&out), ClientError::Hello(r) if r.code == 554));
        // EHLO 4xx: no fallback.
        let mut s = connect(cfg(), "421 busy\r\n");
        assert!(matches!(failed(&pump(&mut s)), ClientError::ServiceClosing(_)));
    }

    #[test]
    fn greeting_refused() {
        let mut s = ClientSession::new(cfg());
        let out = say(&mut s, "554 5.7.1 no service\r\n");
        assert_eq!(out.sent, "QUIT\r\n");
        assert!(matches!(failed(&out), ClientError::Greeting(r) if r.code == 554));
        assert_eq!(pump(&mut s).last, out.last, "Closed is repeated");
    }

    #[test]
    fn starttls_offered() {
        let mut s = connect(cfg(), "250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
        assert_eq!(pump(&mut s).sent, "STARTTLS\r\n");
        assert_eq!(say(&mut s, "220 2.0.0 go ahead\r\n").last, Some(ClientAction::StartTls));
        assert_eq!(pump(&mut s).last, Some(ClientAction::NeedInput));
        s.tls_done(true);
        let out = pump(&mut s);
        assert_eq!(out.sent, "EHLO out.test\r\n");
        assert!(s.is_tls() && !s.capabilities().pipelining);
        let out2 = say(&mut s, "250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
        assert_eq!((out2.sent.as_str(), out2.last), ("", Some(ClientAction::Ready)));
        assert!(s.capabilities().pipelining);
    }

    #[test]
    fn starttls_not_offered_or_refused() {
        // Opportunistic: carry on in clear.
        let s = ready(cfg(), EHLO_PLAIN);
        assert!(!s.is_tls());
        // Required and not offered: temporary failure, after QUIT.
        let mut c = cfg();
        c.require_tls = true;
        let mut s = connect(c.clone(), EHLO_PLAIN);
        let out = pump(&mut s);
        assert_eq!(out.sent, "QUIT\r\n");
        assert_eq!(failed(&out), &ClientError::TlsNotOffered);
        assert!(!failed(&out).is_permanent());
        // Refused by reply: clear if allowed, failure if required.
        let tls_ehlo = "250-mx.test\r\n250 STARTTLS\r\n";
        let mut s = connect(cfg(), tls_ehlo);
        pump(&mut s);
        assert_eq!(say(&mut s, "454 4.7.0 not now\r\n").last, Some(ClientAction::Ready));
        let mut s = connect(c, tls_ehlo);
        pump(&mut s);
        let out = say(&mut s, "454 4.7.0 not now\r\n");
        assert!(matches!(failed(&out), ClientError::StartTlsRefused(_)));
        // Not wanted: STARTTLS is not sent.
        let mut c = cfg();
        c.want_tls = false;
        let mut s = connect(c, tls_ehlo);
        assert_eq!(pump(&mut s).last, Some(ClientAction::Ready));
    }

    #[test]
    fn tls_handshake_failure_and_injection() {
        let tls_ehlo = "250-mx.test\r\n250 STARTTLS\r\n";
        let mut s = connect(cfg(), tls_ehlo);
        pump(&mut s);
        say(&mut s, "220 go\r\n");
        s.tls_done(false);
        let out = pump(&mut s);
        assert!(failed(&out).retry_without_tls());
        let mut s = connect(cfg(), tls_ehlo);
        pump(&mut s);
        let out = say(&mut s, "220 go\r\n250-injected\r\n");
        assert_eq!(failed(&out), &ClientError::TlsInjection);
    }

    fn auth_cfg() -> ClientConfig {
        let mut c = cfg();
        c.auth = Some(("user".into(), "pass".into()));
        c
    }

    #[test]
    fn auth_plain() {
        let mut s = connect(auth_cfg(), "250-mx.test\r\n250 AUTH LOGIN PLAIN\r\n");
        assert_eq!(pump(&mut s).sent, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
        assert_eq!(say(&mut s, "235 2.7.0 ok\r\n").last, Some(ClientAction::Ready));
        assert!(s.is_authenticated());
        assert!(!format!("{:?}", auth_cfg()).contains("pass\""));
    }

    #[test]
    fn auth_login() {
        let mut s = connect(auth_cfg(), "250-mx.test\r\n250 AUTH LOGIN\r\n");
        assert_eq!(pump(&mut s).sent, "AUTH LOGIN\r\n");
        assert_eq!(say(&mut s, "334 VXNlcm5hbWU6\r\n").sent, "dXNlcg==\r\n");
        assert_eq!(say(&mut s, "334 UGFzc3dvcmQ6\r\n").sent, "cGFzcw==\r\n");
        assert_eq!(say(&mut s, "235 ok\r\n").last, Some(ClientAction::Ready));
        assert!(s.is_authenticated());
    }

    #[test]
    fn auth_refused_or_not_offered() {
        let mut s = connect(auth_cfg(), "250-mx.test\r\n250 AUTH PLAIN\r\n");
        pump(&mut s);
        let out = say(&mut s, "535 5.7.8 bad credentials\r\n");
        assert_eq!(out.sent, "QUIT\r\n");
        assert!(matches!(failed(&out), ClientError::AuthFailed(r) if r.code == 535));
        assert!(failed(&out).is_permanent());
        let mut s = connect(auth_cfg(), "250-mx.test\r\n250 AUTH CRAM-MD5\r\n");
        assert_eq!(pump(&mut s).last, Some(ClientAction::Ready));
        assert!(!s.is_authenticated());
    }

    #[test]
    fn smtputf8_needed_but_not_offered() {
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["jöran@c.test"])).unwrap();
        let out = pump(&mut s);
        assert_eq!((out.sent.as_str(), out.last), ("", Some(ClientAction::Ready)));
        let r = &out.done[0].recipients[0];
        assert_eq!(
            (r.outcome, r.reply.status(), r.remote),
            (RcptOutcome::PermFail, Enhanced(5, 6, 7), false)
        );
        // Offered: SMTPUTF8 goes on MAIL.
        let mut s = ready(cfg(), "250-mx\r\n250 SMTPUTF8\r\n");
        let mut e = env(&["x@c.test"]);
        e.smtputf8 = true;
        s.start_message(e).unwrap();
        assert_eq!(pump(&mut s).sent, "MAIL FROM:<a@b.test> SMTPUTF8\r\n");
    }

    #[test]
    fn size_over_the_limit_is_not_sent() {
        let mut s = ready(cfg(), EHLO_PLAIN);
        let mut e = env(&["x@c.test"]);
        e.size = 1001;
        s.start_message(e).unwrap();
        let out = pump(&mut s);
        assert_eq!(out.sent, "");
        assert_eq!(out.done[0].recipients[0].reply.status(), Enhanced(5, 3, 4));
    }

    #[test]
    fn mixed_recipient_results() {
        let mut s = ready(cfg(), EHLO_PIPE);
        let replies = "250 ok\r\n250 ok\r\n450 4.2.1 try later\r\n550 5.1.1 unknown\r\n354 go\r\n";
        let r = deliver(
            &mut s,
            env(&["x@c.test", "y@c.test", "z@c.test"]),
            replies,
            "250 2.0.0 queued\r\n",
        );
        let want = vec![
            (RcptOutcome::Delivered, 250),
            (RcptOutcome::TempFail, 450),
            (RcptOutcome::PermFail, 550),
        ];
        assert_eq!(outcomes(&r), want);
        assert_eq!(r.recipients[2].reply.status(), Enhanced(5, 1, 1));
        assert_eq!(r.delivered().count(), 1);
        assert!(s.is_ready());
    }

    #[test]
    fn all_recipients_rejected_no_pipelining() {
        let mut s = ready(cfg(), EHLO_PLAIN);
        s.start_message(env(&["x@c.test", "y@c.test"])).unwrap();
        pump(&mut s);
        say(&mut s, "250 ok\r\n");
        say(&mut s, "550 no\r\n");
        let out = say(&mut s, "551 no\r\n");
        assert_eq!((out.sent.as_str(), out.last), ("", Some(ClientAction::Ready)));
        assert_eq!(
            outcomes(&out.done[0]),
            vec![(RcptOutcome::PermFail, 550), (RcptOutcome::PermFail, 551)]
        );
        // The transaction is still open on the server: RSET first next time.
        s.start_message(env(&["z@c.test"])).unwrap();
        assert_eq!(pump(&mut s).sent, "RSET\r\n");
        assert_eq!(say(&mut s, "250 reset\r\n").sent, "MAIL FROM:<a@b.test> SIZE=10\r\n");
    }

    #[test]
    fn all_recipients_rejected_with_pipelining() {
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n");
        assert_eq!((out.sent.as_str(), out.last), ("", Some(ClientAction::Ready)));
        assert_eq!(outcomes(&out.done[0]), vec![(RcptOutcome::PermFail, 550)]);
        // A server that answers 354 anyway gets an empty message and no body.
        s.start_message(env(&["x@c.test"])).unwrap();
        assert!(pump(&mut s).sent.starts_with("RSET\r\nMAIL"));
        let out = say(&mut s, "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!((out.sent.as_str(), out.last), (".\r\n", Some(ClientAction::NeedInput)));
        let out = say(&mut s, "554 no message\r\n");
        assert_eq!(outcomes(&out.done[0]), vec![(RcptOutcome::PermFail, 550)]);
        s.start_message(env(&["x@c.test"])).unwrap();
        assert!(pump(&mut s).sent.starts_with("MAIL"), "the data ended the transaction");
    }

    #[test]
    fn mail_refused_applies_to_all() {
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test", "y@c.test"])).unwrap();
        pump(&mut s);
        let out = say(
            &mut s,
            "451 4.3.0 later\r\n503 no mail\r\n503 no mail\r\n503 no mail\r\n",
        );
        assert_eq!(
            outcomes(&out.done[0]),
            vec![(RcptOutcome::TempFail, 451), (RcptOutcome::TempFail, 451)]
        );
        let mut s = ready(cfg(), EHLO_PLAIN);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "553 5.1.8 bad sender\r\n");
        assert_eq!(out.sent, "");
        assert_eq!(outcomes(&out.done[0]), vec![(RcptOutcome::PermFail, 553)]);
    }

    #[test]
    fn data_refused_temporarily() {
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test", "y@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "250 ok\r\n250 ok\r\n550 no\r\n451 4.3.0 try later\r\n");
        assert_eq!(out.last, Some(ClientAction::Ready));
        assert_eq!(
            outcomes(&out.done[0]),
            vec![(RcptOutcome::TempFail, 451), (RcptOutcome::PermFail, 550)]
        );
        s.start_message(env(&["x@c.test"])).unwrap();
        assert!(pump(&mut s).sent.starts_with("RSET\r\nMAIL"));
    }

    #[test]
    fn final_reply_refused() {
        let mut s = ready(cfg(), EHLO_PIPE);
        let r = deliver(
            &mut s,
            env(&["x@c.test"]),
            "250 ok\r\n250 ok\r\n354 go\r\n",
            "552 5.3.4 too big\r\n",
        );
        assert_eq!(outcomes(&r), vec![(RcptOutcome::PermFail, 552)]);
        s.start_message(env(&["x@c.test"])).unwrap();
        assert!(pump(&mut s).sent.starts_with("MAIL"), "no RSET after the data's reply");
    }

    #[test]
    fn lmtp_replies_per_recipient() {
        let mut c = cfg();
        c.lmtp = true;
        let mut s = ClientSession::new(c);
        assert_eq!(say(&mut s, "220 lmtp\r\n").sent, "LHLO out.test\r\n");
        assert_eq!(
            say(&mut s, "250-lmtp\r\n250 PIPELINING\r\n").last,
            Some(ClientAction::Ready)
        );
        s.start_message(env(&["x@c.test", "y@c.test", "z@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "250 ok\r\n250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!(out.last, Some(ClientAction::SendBody));
        s.body_sent();
        assert_eq!(
            say(&mut s, "250 2.0.0 x delivered\r\n").last,
            Some(ClientAction::NeedInput)
        );
        let out = say(&mut s, "452 4.2.2 y over quota\r\n");
        assert_eq!(out.last, Some(ClientAction::Ready));
        let want = vec![
            (RcptOutcome::Delivered, 250),
            (RcptOutcome::TempFail, 452),
            (RcptOutcome::PermFail, 550),
        ];
        assert_eq!(outcomes(&out.done[0]), want);
    }

    #[test]
    fn lmtp_has_no_helo_fallback() {
        let mut c = cfg();
        c.lmtp = true;
        let mut s = ClientSession::new(c);
        say(&mut s, "220 lmtp\r\n");
        let out = say(&mut s, "500 what\r\n");
        assert!(matches!(failed(&out), ClientError::Hello(_)));
    }

    #[test]
    fn connection_reuse() {
        let mut s = ready(cfg(), EHLO_PIPE);
        let replies = "250 ok\r\n250 ok\r\n354 go\r\n";
        assert!(deliver(&mut s, env(&["x@c.test"]), replies, "250 one\r\n").all_delivered());
        s.start_message(env(&["y@c.test"])).unwrap();
        assert_eq!(
            pump(&mut s).sent,
            "MAIL FROM:<a@b.test> SIZE=10\r\nRCPT TO:<y@c.test>\r\nDATA\r\n"
        );
        say(&mut s, replies);
        s.body_sent();
        let out = say(&mut s, "250 two\r\n");
        assert_eq!(out.done[0].recipients[0].reply.text(), "two");
        assert!(s.start_message(env(&["z@c.test"])).is_ok());
        assert!(s.start_message(env(&["w@c.test"])).is_err(), "busy");
    }

    #[test]
    fn failures_mid_message_are_temporary() {
        // Unparsable reply: TempFail made up by posta, connection failed.
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test", "y@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "250 ok\r\n550 no\r\nwhat is this\r\n");
        let r = &out.done[0];
        assert_eq!(
            outcomes(r),
            vec![(RcptOutcome::PermFail, 550), (RcptOutcome::TempFail, 451)]
        );
        assert_eq!(
            (r.recipients[1].remote, r.recipients[1].reply.status()),
            (false, Enhanced(4, 5, 0))
        );
        assert!(matches!(failed(&out), ClientError::BadReply(ReplyError::Malformed(_))));
        // 421: the server's own reply for everyone still open.
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "250 ok\r\n421 4.3.2 shutting down\r\n");
        assert_eq!(outcomes(&out.done[0]), vec![(RcptOutcome::TempFail, 421)]);
        assert!(out.done[0].recipients[0].remote);
        // Unexpected code and peer close during the body.
        let mut s = ready(cfg(), EHLO_PLAIN);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        let out = say(&mut s, "334 what\r\n");
        assert!(matches!(failed(&out), ClientError::Unexpected { command: "MAIL", .. }));
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        say(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n");
        s.peer_closed();
        let out = pump(&mut s);
        assert_eq!(outcomes(&out.done[0]), vec![(RcptOutcome::TempFail, 451)]);
        assert_eq!(failed(&out), &ClientError::PeerClosed);
    }

    #[test]
    fn idle_and_quit_edges() {
        // 421 on an idle connection.
        let mut s = ready(cfg(), EHLO_PIPE);
        assert!(matches!(
            failed(&say(&mut s, "421 idle too long\r\n")),
            ClientError::ServiceClosing(_)
        ));
        // quit() mid-message aborts without QUIT.
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        s.quit();
        let out = pump(&mut s);
        assert_eq!((out.sent.as_str(), failed(&out)), ("", &ClientError::Aborted));
        assert_eq!(out.done.len(), 1);
        // Timeout while waiting.
        let mut s = connect(cfg(), "");
        s.timed_out();
        assert_eq!(failed(&pump(&mut s)), &ClientError::Timeout);
        // A flood while the body is being written.
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(env(&["x@c.test"])).unwrap();
        pump(&mut s);
        say(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n");
        let out = say(&mut s, &"x".repeat(MAX_REPLY_BYTES + 1));
        assert_eq!(failed(&out), &ClientError::TooMuchData);
    }

    #[test]
    fn dsn_parameters_only_when_offered() {
        let mut e = env(&["x@c.test", "y@c.test"]);
        e.ret = Some(DsnRet::Hdrs);
        e.envid = Some("id+1=2 x".into());
        e.recipients[0].notify = vec![DsnNotify::Success, DsnNotify::Failure];
        e.recipients[0].orcpt = Some("X@c.test".into());
        e.recipients[1].notify = vec![DsnNotify::Delay, DsnNotify::Never];
        e.recipients[1].orcpt = Some("jö+@c.test".into());
        let mut s = ready(cfg(), "250-mx\r\n250-PIPELINING\r\n250 DSN\r\n");
        s.start_message(e.clone()).unwrap();
        let want = "MAIL FROM:<a@b.test> RET=HDRS ENVID=id+2B1+3D2+20x\r\n\
                    RCPT TO:<x@c.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;X@c.test\r\n\
                    RCPT TO:<y@c.test> NOTIFY=NEVER ORCPT=utf-8;j\\x{F6}\\x{2B}@c.test\r\nDATA\r\n";
        assert_eq!(pump(&mut s).sent, want);
        let mut s = ready(cfg(), EHLO_PIPE);
        s.start_message(e).unwrap();
        assert!(!pump(&mut s).sent.contains("NOTIFY"));
    }

    #[test]
    fn null_sender_and_unsafe_addresses() {
        let mut s = ready(cfg(), EHLO_PIPE);
        let mut e = env(&["x@c.test\r\nRSET", "y@c.test"]);
        e.mail_from = None;
        s.start_message(e).unwrap();
        assert_eq!(
            pump(&mut s).sent,
            "MAIL FROM:<> SIZE=10\r\nRCPT TO:<y@c.test>\r\nDATA\r\n"
        );
        let out = say(&mut s, "250 ok\r\n550 no\r\n554 none\r\n");
        assert_eq!(
            outcomes(&out.done[0]),
            vec![(RcptOutcome::PermFail, 553), (RcptOutcome::PermFail, 550)]
        );
        let mut e = env(&["x@c.test"]);
        e.mail_from = Some("a@b>".into());
        s.start_message(e).unwrap();
        let out = pump(&mut s);
        assert_eq!(
            (out.sent.as_str(), out.done[0].recipients[0].reply.status()),
            ("", Enhanced(5, 1, 7))
        );
        // No recipients at all: done at once.
        s.start_message(env(&[])).unwrap();
        assert_eq!(pump(&mut s).done[0].recipients, vec![]);
    }

    #[test]
    fn data_terminators() {
        assert_eq!(data_terminator(b""), b".\r\n");
        assert_eq!(data_terminator(b"hi\r\n"), b".\r\n");
        assert_eq!(data_terminator(b"hi"), b"\r\n.\r\n");
        assert_eq!(data_terminator(b"hi\n"), b"\r\n.\r\n");
        assert_eq!(data_terminator(b"hi\r"), b"\n.\r\n");
        let mut body = b"Subject: x\r\n\r\nno newline".to_vec();
        append_data_terminator(&mut body);
        assert!(body.ends_with(b"no newline\r\n.\r\n"));
        let mut tail = BodyTail::default();
        assert_eq!(tail.terminator(), b".\r\n");
        for chunk in [&b"abc\r"[..], b"\n", b""] {
            tail.update(chunk);
        }
        assert_eq!(tail.terminator(), b".\r\n");
        tail.update(b"x");
        assert_eq!(tail.terminator(), b"\r\n.\r\n");
    }

    #[test]
    fn base64_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ];
        for (plain, coded) in cases {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    // ----- random input ------------------------------------------------------------------

    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Mostly well-formed replies (so that sessions get deep), sometimes cut short, sometimes
        /// junk mixed with reply fragments.
        fn bytes(&mut self) -> Vec<u8> {
            const GOOD: [&[u8]; 9] = [
                b"250 ok\r\n",
                b"250-mx\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250-DSN\r\n250 SIZE 99\r\n",
                b"250-mx\r\n250 8BITMIME\r\n",
                b"354 go\r\n",
                b"235 ok\r\n",
                b"334 x\r\n",
                b"220 go\r\n",
                b"550 5.1.1 no\r\n",
                b"451 4.0.0 later\r\n",
            ];
            const JUNK: [&[u8]; 6] = [b"250-", b"421 bye\r\n", b"\r\n", b"\n", b"2", b"STARTTLS\r\n"];
            let good = GOOD[self.below(GOOD.len())];
            match self.below(8) {
                0 => good[..self.below(good.len())].to_vec(),
                1 => {
                    let mut out = Vec::new();
                    for _ in 0..self.below(6) {
                        match self.below(3) {
                            0 => out.extend((0..self.below(12)).map(|_| self.next() as u8)),
                            1 => out.extend_from_slice(JUNK[self.below(JUNK.len())]),
                            _ => out.extend_from_slice(GOOD[self.below(GOOD.len())]),
                        }
                    }
                    out
                }
                _ => good.to_vec(),
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Lcg(42);
        for _ in 0..20_000 {
            let bytes = rng.bytes();
            if let Ok(Some((_, used))) = parse_reply(&bytes) {
                assert!(used <= bytes.len());
            }
        }
        let mut reached = (0, 0);
        for round in 0..3_000 {
            let mut c = cfg();
            c.lmtp = round % 5 == 0;
            c.require_tls = round % 7 == 0;
            c.max_reply_bytes = 64 + rng.below(2000);
            if round % 3 == 0 {
                c.auth = Some(("u".into(), "p".into()));
            }
            let (ready, done) = random_session(&mut rng, c);
            reached.0 += usize::from(ready);
            reached.1 += usize::from(done);
        }
        // The input must reach deep states, or the test proves little.
        assert!(reached.0 > 500 && reached.1 > 100, "{reached:?}");
    }

    /// Drive a session with random calls and bytes; whether it got Ready and settled a message.
    fn random_session(rng: &mut Lcg, c: ClientConfig) -> (bool, bool) {
        let mut s = ClientSession::new(c);
        let (mut ready, mut done) = (false, false);
        if rng.below(4) != 0 {
            s.receive(b"220 hi\r\n");
        }
        for _ in 0..80 {
            match rng.below(8) {
                0 => s.tls_done(rng.below(4) != 0),
                1 => s.body_sent(),
                2 if rng.below(10) == 0 => s.quit(),
                3 if rng.below(20) == 0 => s.peer_closed(),
                4 => {
                    let mut e = env(&["x@c.test", "y@c.test", "z@c.test"][..1 + rng.below(3)]);
                    e.smtputf8 = rng.below(4) == 0;
                    let _ = s.start_message(e);
                }
                _ => s.receive(&rng.bytes()),
            }
            let out = pump(&mut s);
            ready |= out.last == Some(ClientAction::Ready);
            done |= !out.done.is_empty();
            if let Some(ClientAction::Closed(_)) = out.last {
                break;
            }
        }
        (ready, done)
    }
}
