//! RFC 3464 delivery status notifications (bounces, delay warnings, success reports).
//!
//! [`build_dsn`] turns the original queue item (its envelope, its stored message) and the
//! per-recipient results into a complete `multipart/report; report-type=delivery-status`
//! message, ready to be written as the body of a new queue file:
//!
//! 1. `text/plain`: the human part, from Haraka's `config/outbound.bounce_message` template
//!    (a header block, a blank line, a body, `{name}` placeholders; see [`BounceTemplate`]).
//! 2. `message/delivery-status`: `Reporting-MTA`, `Original-Envelope-Id` (ENVID),
//!    `Arrival-Date`, then one block per recipient (`Original-Recipient`, `Final-Recipient`,
//!    `Action`, `Status`, `Remote-MTA`, `Diagnostic-Code`, `Last-Attempt-Date`, …).
//! 3. `text/rfc822-headers` (the original header section), or `message/rfc822` (the whole
//!    original) when the sender asked for `RET=FULL` and the report is about a failure
//!    (RFC 3461 4.3: reports without a failure return headers only; so does a report without
//!    RET). An original that cannot travel as 8bit MIME (a line over 998 octets, bare CR or
//!    LF, NUL: BINARYMIME content) is returned as headers only even with `RET=FULL`.
//!
//! The stored original is dot-stuffed; it is unstuffed for the report, and the finished
//! report is dot-stuffed again, so a lone `.` line in the original stays harmless.
//!
//! Where posta differs from Haraka's `populate_bounce_message_with_headers` (hmail.js):
//! - `Original-Envelope-Id` carries the sender's ENVID (RFC 3464 2.2.1) and is left out when
//!   there was none; Haraka puts the original `Message-Id` there.
//! - `RET=FULL` is honoured (RFC 3461 4.3); Haraka always returns headers only.
//! - `Original-Recipient` is written from ORCPT (RFC 3461 6.3); Haraka never writes it.
//! - Everything that came from outside (addresses, remote replies, the original Subject,
//!   ENVID, ORCPT) has control characters replaced before it goes into a header or field, so
//!   a remote reply cannot inject a header; Haraka substitutes values verbatim.
//! - The `message/delivery-status` part is kept 7-bit: a non-ASCII address is written as
//!   `utf-8; ` with RFC 6533 `\x{HEX}` escapes, other non-ASCII text as `?`.

use std::borrow::Cow;

use chrono::{TimeZone, Utc};
use serde_json::Value;

use crate::protocol::command::Ret;
use crate::queue::file::{Todo, TodoAddress};

/// RFC 5322 2.1.1: a line is at most 998 octets. Generated lines stay well under it.
const MAX_LINE: usize = 998;
/// Longest piece of one word written on a folded field line.
const MAX_WORD: usize = 900;
/// Where field folding aims (RFC 5322 2.1.1 "SHOULD be no more than 78").
const FOLD_AT: usize = 78;

/// The `Action` of one recipient (RFC 3464 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DsnAction {
    /// Could not be delivered; no further attempts.
    Failed,
    /// Not delivered yet; the MTA keeps trying.
    Delayed,
    /// Delivered to the recipient's mailbox (or a final LMTP/SMTP hop that accepts DSN duty).
    Delivered,
    /// Handed to a next hop that does not support DSN, so no further reports will come.
    Relayed,
    /// Delivered to an alias or list and expanded.
    Expanded,
}

impl DsnAction {
    /// The keyword as written in the `Action` field.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
            DsnAction::Expanded => "expanded",
        }
    }

    /// Parse an `Action` keyword (case-insensitive), as Haraka stores it in `dsn_action`.
    pub fn parse(s: &str) -> Option<DsnAction> {
        match s.trim().to_ascii_lowercase().as_str() {
            "failed" => Some(DsnAction::Failed),
            "delayed" => Some(DsnAction::Delayed),
            "delivered" => Some(DsnAction::Delivered),
            "relayed" => Some(DsnAction::Relayed),
            "expanded" => Some(DsnAction::Expanded),
            _ => None,
        }
    }

    /// The status class this action requires (RFC 3463: 2 success, 4 persistent transient,
    /// 5 permanent).
    fn status_class(self) -> u8 {
        match self {
            DsnAction::Failed => 5,
            DsnAction::Delayed => 4,
            DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded => 2,
        }
    }
}

impl std::fmt::Display for DsnAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a report is about, which picks the default template and its Subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// At least one recipient failed ("failure notice").
    Failure,
    /// No failure, at least one delayed ("delayed mail").
    Delay,
    /// Only delivered/relayed/expanded recipients ("delivery report").
    Success,
}

impl ReportKind {
    /// The kind of a report about these recipients.
    pub fn of(recipients: &[RecipientReport]) -> ReportKind {
        if recipients.iter().any(|r| r.action == DsnAction::Failed) {
            ReportKind::Failure
        } else if recipients.iter().any(|r| r.action == DsnAction::Delayed) {
            ReportKind::Delay
        } else {
            ReportKind::Success
        }
    }
}

/// Why a recipient ended as it did, for `Diagnostic-Code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// A reply from the remote MTA: `Diagnostic-Code: smtp; <code> <text>`. `text` is the rest
    /// of the reply (enhanced code included); a multi-line reply is joined with spaces.
    Smtp { code: u16, text: String },
    /// A local reason that is not an SMTP reply (DNS failure, too many retries, …):
    /// `Diagnostic-Code: X-Posta; <text>`.
    Other(String),
}

impl Diagnostic {
    /// The diagnostic as one line of text, without its type.
    pub fn text(&self) -> String {
        match self {
            Diagnostic::Smtp { code, text } if text.is_empty() => code.to_string(),
            Diagnostic::Smtp { code, text } => format!("{code} {text}"),
            Diagnostic::Other(text) => text.clone(),
        }
    }
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient as delivered to (no angle brackets).
    pub address: String,
    /// The ORCPT parameter as stored (`addr-type;xtext`, RFC 3461 4.2), if the client gave one.
    pub orcpt: Option<String>,
    pub action: DsnAction,
    /// Enhanced status `class.subject.detail` (RFC 3463). A malformed status, or one whose class
    /// does not fit the action, is corrected when the report is written (see [`build_dsn`]).
    pub status: String,
    /// Host name of the remote MTA, when one was reached.
    pub remote_mta: Option<String>,
    /// Its IP address (used for `Remote-MTA` when the host name is unknown).
    pub remote_ip: Option<String>,
    pub diagnostic: Option<Diagnostic>,
    /// Time of the last delivery attempt, ms since the epoch (defaults to the report time).
    pub last_attempt: Option<u64>,
    /// For `delayed`: when the MTA gives up, ms since the epoch.
    pub will_retry_until: Option<u64>,
}

impl RecipientReport {
    /// A report with only the required fields.
    pub fn new(address: impl Into<String>, action: DsnAction, status: impl Into<String>) -> Self {
        RecipientReport {
            address: address.into(),
            orcpt: None,
            action,
            status: status.into(),
            remote_mta: None,
            remote_ip: None,
            diagnostic: None,
            last_attempt: None,
            will_retry_until: None,
        }
    }

    /// A report for a recipient of a queue file: the address, posta's `dsn_orcpt`, and what
    /// Haraka's delivery code stores per recipient (`dsn_status`, `dsn_remote_mta`,
    /// `dsn_smtp_code`, `dsn_smtp_extc`, `dsn_smtp_response`, or `reason`) when present.
    pub fn from_todo_address(addr: &TodoAddress, action: DsnAction) -> Self {
        let text = |k: &str| addr.extra.get(k).and_then(value_text);
        let mut r = RecipientReport::new(bare_address(addr), action, text("dsn_status").unwrap_or_default());
        r.orcpt = text("dsn_orcpt");
        r.remote_mta = text("dsn_remote_mta");
        let code = text("dsn_smtp_code").and_then(|c| c.trim().parse::<u16>().ok());
        r.diagnostic = match code {
            Some(code) => {
                let rest: Vec<String> = ["dsn_smtp_extc", "dsn_smtp_response"]
                    .iter()
                    .filter_map(|k| text(k))
                    .collect();
                Some(Diagnostic::Smtp {
                    code,
                    text: rest.join(" "),
                })
            }
            None => text("reason").map(Diagnostic::Other),
        };
        r
    }

    /// The recipient's reason as one line, for the human part.
    fn reason(&self) -> String {
        match &self.diagnostic {
            Some(d) => d.text(),
            None => format!("{} ({})", self.action, self.status),
        }
    }
}

/// What the report needs to know about the original message's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginalEnvelope {
    /// The original sender without angle brackets; empty for the null sender.
    pub mail_from: String,
    /// When the message was queued, ms since the epoch.
    pub queue_time: u64,
    /// The queue item's id (for `X-Posta-Queue-ID`).
    pub uuid: String,
    /// ENVID as stored (xtext, RFC 3461 4.4).
    pub envid: Option<String>,
    /// RET as given on MAIL FROM.
    pub ret: Option<Ret>,
}

impl OriginalEnvelope {
    /// Read the envelope from a queue file's todo (posta keeps `dsn_envid` and `dsn_ret` in
    /// `Todo.extra`).
    pub fn from_todo(todo: &Todo) -> OriginalEnvelope {
        OriginalEnvelope {
            mail_from: bare_address(&todo.mail_from),
            queue_time: todo.queue_time,
            uuid: todo.uuid.clone(),
            envid: todo.extra.get("dsn_envid").and_then(value_text),
            ret: todo
                .extra
                .get("dsn_ret")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
        }
    }
}

/// True for the null reverse-path `<>`: a message that is itself a bounce. It never gets a
/// DSN (RFC 5321 4.5.5; Haraka: "double bounce", checked as `!todo.mail_from.user`).
pub fn is_null_sender(mail_from: &TodoAddress) -> bool {
    let original = mail_from.original.trim();
    original.is_empty() || original == "<>" || mail_from.user.as_deref().is_none_or(str::is_empty)
}

/// Whether a recipient's NOTIFY parameter (RFC 3461 4.1) asks for a report with this action.
///
/// - `NEVER`: never.
/// - `failed` needs `FAILURE`, `delayed` needs `DELAY`, `delivered`/`relayed`/`expanded` need
///   `SUCCESS` (RFC 3461 6.2.1: a relay to a non-DSN MTA is reported when SUCCESS was asked).
/// - No NOTIFY (or an empty list): `FAILURE` only. RFC 3461 lets the MTA pick `FAILURE` or
///   `FAILURE,DELAY`; posta does not send delay warnings unless asked, as Haraka never does.
pub fn should_notify<S: AsRef<str>>(notify: Option<&[S]>, action: DsnAction) -> bool {
    let words = match notify {
        Some(w) if !w.is_empty() => w,
        _ => return action == DsnAction::Failed,
    };
    let has = |k: &str| words.iter().any(|w| w.as_ref().trim().eq_ignore_ascii_case(k));
    if has("NEVER") {
        return false;
    }
    match action {
        DsnAction::Failed => has("FAILURE"),
        DsnAction::Delayed => has("DELAY"),
        DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded => has("SUCCESS"),
    }
}

/// The NOTIFY keywords stored for a queue file recipient (`dsn_notify`), if any.
pub fn notify_keywords(addr: &TodoAddress) -> Option<Vec<String>> {
    match addr.extra.get("dsn_notify")? {
        Value::Array(a) => Some(a.iter().filter_map(value_text).collect()),
        Value::String(s) => Some(s.split(',').map(str::to_string).collect()),
        _ => None,
    }
}

/// [`should_notify`] for a queue file recipient.
pub fn rcpt_should_notify(addr: &TodoAddress, action: DsnAction) -> bool {
    should_notify(notify_keywords(addr).as_deref(), action)
}

/// The human part of a report: Haraka's `config/outbound.bounce_message` format.
///
/// A header block, a blank line, a body. `{name}` is replaced by a value: `date`, `me`,
/// `from`, `to`, `subject`, `recipients`, `reason`, `extended_reason`, `pid`, `msgid`; an
/// unknown name or an empty value gives `?` (Haraka's rule). `from` and `to` are both the
/// original sender (the report's recipient): Haraka's documentation says `from` is the original
/// sender and its code fills `to` with it, so templates written either way address the sender.
///
/// `MIME-Version`, `Content-Type` and `Content-Transfer-Encoding` lines in the template are
/// dropped (the report sets its own). `Date`, `From`, `Message-ID` and `Auto-Submitted` are
/// added when the template lacks them, so a short template still makes a valid, loop-safe
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceTemplate {
    headers: Vec<(String, String)>,
    body: Vec<String>,
}

const DEFAULT_FAILURE: &str = "\
Received: (posta {pid} invoked for bounce); {date}
Date: {date}
From: MAILER-DAEMON@{me}
To: {to}
Auto-Submitted: auto-replied
Subject: failure notice
Message-Id: {msgid}

Hi. This is the mail system at {me}.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

Intended Recipients: {recipients}
Failure Reason: {reason}
";

const DEFAULT_DELAY: &str = "\
Received: (posta {pid} invoked for delay notice); {date}
Date: {date}
From: MAILER-DAEMON@{me}
To: {to}
Auto-Submitted: auto-replied
Subject: delayed mail
Message-Id: {msgid}

Hi. This is the mail system at {me}.
Your message has not been delivered yet to the following addresses.
This is a temporary problem: I will keep trying, there is no need to send it again.

Intended Recipients: {recipients}
Delay Reason: {reason}
";

const DEFAULT_SUCCESS: &str = "\
Received: (posta {pid} invoked for delivery report); {date}
Date: {date}
From: MAILER-DAEMON@{me}
To: {to}
Auto-Submitted: auto-replied
Subject: delivery report
Message-Id: {msgid}

Hi. This is the mail system at {me}.
As you asked, this is to tell you that your message was delivered
to the following addresses.

Recipients: {recipients}
";

impl BounceTemplate {
    /// Parse a template. Fails, naming the line, when a header line is not `Name: value` (a
    /// bad template would otherwise produce broken bounces for every failure).
    pub fn parse(text: &str) -> Result<BounceTemplate, String> {
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut body = Vec::new();
        let mut in_body = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if in_body {
                body.push(line.to_string());
            } else if line.is_empty() {
                in_body = true;
            } else if line.starts_with([' ', '\t']) {
                let Some(last) = headers.last_mut() else {
                    return Err(format!(
                        "bounce template line {}: continuation before any header",
                        i + 1
                    ));
                };
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else {
                let valid = line
                    .split_once(':')
                    .filter(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
                let Some((name, value)) = valid else {
                    return Err(format!(
                        "bounce template line {}: not a 'Name: value' header: {line:?}",
                        i + 1
                    ));
                };
                headers.push((name.to_string(), value.trim().to_string()));
            }
        }
        while body.last().is_some_and(|l: &String| l.is_empty()) {
            body.pop();
        }
        Ok(BounceTemplate { headers, body })
    }

    /// posta's built-in template for a kind of report (Haraka's default text for failures).
    pub fn default_for(kind: ReportKind) -> BounceTemplate {
        let text = match kind {
            ReportKind::Failure => DEFAULT_FAILURE,
            ReportKind::Delay => DEFAULT_DELAY,
            ReportKind::Success => DEFAULT_SUCCESS,
        };
        // The built-in texts are constants that parse; the fallback cannot happen.
        BounceTemplate::parse(text).unwrap_or(BounceTemplate {
            headers: Vec::new(),
            body: Vec::new(),
        })
    }
}

/// Everything [`build_dsn`] needs.
#[derive(Debug, Clone)]
pub struct DsnRequest<'a> {
    /// This MTA's name (`config/me`): `Reporting-MTA` and the template's `{me}`.
    pub me: &'a str,
    pub envelope: &'a OriginalEnvelope,
    /// The recipients this report is about (already filtered with [`should_notify`]).
    pub recipients: &'a [RecipientReport],
    /// The original message as stored in its queue file: CRLF, dot-stuffed.
    pub original: &'a [u8],
    /// The human part; `None` uses [`BounceTemplate::default_for`] the report's kind.
    pub template: Option<&'a BounceTemplate>,
    /// The template's `{reason}`; `None` joins the recipients' distinct reasons.
    pub reason: Option<&'a str>,
    /// The report time, ms since the epoch.
    pub now_ms: u64,
    /// A unique id for the report: its `Message-ID` is `<report_id@me>` and its MIME boundary
    /// is built from it.
    pub report_id: &'a str,
    /// The template's `{pid}`.
    pub pid: u32,
}

/// A built report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// The whole message, headers and body, CRLF, dot-stuffed: the body of its queue file.
    pub message: Vec<u8>,
    pub kind: ReportKind,
    /// The report's own `Message-ID`, with angle brackets.
    pub message_id: String,
    /// Some octet is above 127: send with `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// The header section holds UTF-8 (RFC 6532): send with `SMTPUTF8`.
    pub utf8_headers: bool,
}

/// Build a complete delivery status notification. See the module documentation for its shape.
///
/// Status fields are made consistent with the action, as Haraka's
/// `convert_temp_failed_to_bounce` does: a `failed` recipient with a `4.x.x` status is reported
/// as `5.x.x`, a `delayed` one with `5.x.x` as `4.x.x`, and a malformed status (Haraka stores
/// `3.0.0` after an unexpected 3xx reply) becomes `<class>.0.0`.
pub fn build_dsn(req: &DsnRequest<'_>) -> Dsn {
    let me = clean(req.me, false);
    let kind = ReportKind::of(req.recipients);
    let original = unstuff(req.original);
    let orig_headers = header_section(&original);
    let orig_subject = header_value(orig_headers, "Subject");
    let orig_msgid = header_value(orig_headers, "Message-ID").and_then(|v| msg_id(&v));

    let report_id = if req.report_id.trim().is_empty() {
        uuid::Uuid::new_v4().simple().to_string()
    } else {
        clean(req.report_id, true).replace(|c: char| !c.is_ascii_alphanumeric() && !".-_".contains(c), "")
    };
    let message_id = format!("<{report_id}@{me}>");
    let now = rfc5322_date(req.now_ms);

    // Part 1: the human text, from the template.
    let values = template_values(req, &me, &now, &message_id, orig_subject.as_deref());
    let default_template;
    let template = match req.template {
        Some(t) => t,
        None => {
            default_template = BounceTemplate::default_for(kind);
            &default_template
        }
    };
    let mut human = Vec::new();
    for line in &template.body {
        let rendered = render(line, &values, false);
        for l in rendered.split('\n') {
            push_body_line(&mut human, l);
        }
    }

    // Part 2: the delivery-status fields.
    let status = delivery_status(req, &me);

    // Part 3: the original, whole or headers only.
    let full = req.envelope.ret == Some(Ret::Full) && kind == ReportKind::Failure && fits_in_8bit_mime(&original);
    let part3: Cow<'_, [u8]> = if full {
        Cow::Borrowed(&original[..])
    } else {
        Cow::Owned(header_section_part(orig_headers))
    };

    // The boundary must not occur in any part (RFC 2046 5.1.1); it is built from the report id,
    // and a counter is added in the unlikely case the content holds it.
    let base: String = format!("posta_dsn_{report_id}").chars().take(60).collect();
    let mut boundary = base.clone();
    let mut n = 0u32;
    while [&human[..], &status[..], &part3[..]]
        .iter()
        .any(|p| contains(p, boundary.as_bytes()))
    {
        n += 1;
        boundary = format!("{base}_{n}");
    }

    let mut out = Vec::with_capacity(human.len() + status.len() + part3.len() + 1024);
    let have = |name: &str| template.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let missing: Vec<(&str, String)> = [
        ("Date", now.clone()),
        ("From", format!("MAILER-DAEMON@{me}")),
        ("Message-ID", message_id.clone()),
        ("Auto-Submitted", "auto-replied".to_string()),
    ]
    .into_iter()
    .filter(|(n, _)| !have(n))
    .collect();
    for (name, value) in &template.headers {
        if ["MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_field(&mut out, name, &render(value, &values, true));
    }
    for (name, value) in &missing {
        push_field(&mut out, name, value);
    }
    if let Some(id) = &orig_msgid {
        push_field(&mut out, "In-Reply-To", id);
        push_field(&mut out, "References", id);
    }
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(b"Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n");
    let utf8_headers = !out.is_ascii();

    let (charset, cte) = if human.is_ascii() {
        ("us-ascii", "7bit")
    } else {
        ("utf-8", "8bit")
    };
    open_part(
        &mut out,
        &boundary,
        &format!("text/plain; charset={charset}"),
        None,
        Some(cte),
    );
    out.extend_from_slice(&human);
    out.extend_from_slice(b"\r\n");

    open_part(
        &mut out,
        &boundary,
        "message/delivery-status",
        Some("Delivery report"),
        None,
    );
    out.extend_from_slice(&status);
    out.extend_from_slice(b"\r\n");

    if full {
        let cte = if original.is_ascii() { None } else { Some("8bit") };
        open_part(&mut out, &boundary, "message/rfc822", Some("Undelivered Message"), cte);
    } else {
        let cte = if part3.is_ascii() { None } else { Some("8bit") };
        open_part(
            &mut out,
            &boundary,
            "text/rfc822-headers",
            Some("Undelivered Message Headers"),
            cte,
        );
    }
    out.extend_from_slice(&part3);
    // The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1): add one so the
    // part keeps its own final line ending.
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");

    Dsn {
        eight_bit: !out.is_ascii(),
        message: dot_stuff(&out),
        kind,
        message_id,
        utf8_headers,
    }
}

fn open_part(out: &mut Vec<u8>, boundary: &str, ctype: &str, description: Option<&str>, cte: Option<&str>) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\r\n");
    push_field(out, "Content-Type", ctype);
    if let Some(d) = description {
        push_field(out, "Content-Description", d);
    }
    if let Some(c) = cte {
        push_field(out, "Content-Transfer-Encoding", c);
    }
    out.extend_from_slice(b"\r\n");
}

/// The `message/delivery-status` content: per-message fields, then a block per recipient.
fn delivery_status(req: &DsnRequest<'_>, me: &str) -> Vec<u8> {
    let env = req.envelope;
    let mut s = Vec::with_capacity(256 + 256 * req.recipients.len());
    if let Some(envid) = &env.envid {
        // RFC 3464 2.2.1: the ENVID, decoded from xtext. Bytes that do not decode to printable
        // ASCII stay in their xtext form.
        let decoded = xtext_decode(envid);
        let v = if decoded.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            decoded
        } else {
            envid.clone()
        };
        push_field(&mut s, "Original-Envelope-Id", &clean(&v, true));
    }
    push_field(&mut s, "Reporting-MTA", &format!("dns; {}", clean(me, true)));
    if !env.uuid.is_empty() {
        push_field(&mut s, "X-Posta-Queue-ID", &clean(&env.uuid, true));
    }
    if env.queue_time > 0 {
        push_field(&mut s, "Arrival-Date", &rfc5322_date(env.queue_time));
    }
    for r in req.recipients {
        s.extend_from_slice(b"\r\n");
        if let Some(orcpt) = &r.orcpt {
            if let Some(v) = original_recipient(orcpt) {
                push_field(&mut s, "Original-Recipient", &v);
            }
        }
        push_field(&mut s, "Final-Recipient", &typed_address(&r.address));
        push_field(&mut s, "Action", r.action.as_str());
        push_field(&mut s, "Status", &fix_status(&r.status, r.action));
        let mta = match (&r.remote_mta, &r.remote_ip) {
            (Some(h), _) if !h.trim().is_empty() => Some(clean(h, true)),
            (_, Some(ip)) if !ip.trim().is_empty() => Some(format!("[{}]", clean(ip, true))),
            _ => None,
        };
        if let Some(m) = mta {
            push_field(&mut s, "Remote-MTA", &format!("dns; {m}"));
        }
        match &r.diagnostic {
            Some(d @ Diagnostic::Smtp { .. }) => {
                push_field(&mut s, "Diagnostic-Code", &format!("smtp; {}", clean(&d.text(), true)))
            }
            Some(Diagnostic::Other(t)) => {
                push_field(&mut s, "Diagnostic-Code", &format!("X-Posta; {}", clean(t, true)))
            }
            None => {}
        }
        push_field(
            &mut s,
            "Last-Attempt-Date",
            &rfc5322_date(r.last_attempt.unwrap_or(req.now_ms)),
        );
        if r.action == DsnAction::Delayed {
            if let Some(until) = r.will_retry_until {
                push_field(&mut s, "Will-Retry-Until", &rfc5322_date(until));
            }
        }
    }
    s
}

/// `Original-Recipient` from a stored ORCPT `type;xtext` (RFC 3461 4.2, decoded per 6.3).
fn original_recipient(orcpt: &str) -> Option<String> {
    let (kind, value) = orcpt.split_once(';')?;
    let kind = clean(kind, true);
    if kind.is_empty() {
        return None;
    }
    if kind.eq_ignore_ascii_case("utf-8") {
        // RFC 6533: already utf-8-addr-xtext, or raw UTF-8 that is escaped here.
        return Some(format!("utf-8; {}", utf8_addr_xtext(value, true)));
    }
    let decoded = xtext_decode(value);
    if decoded.is_ascii() {
        Some(format!("{kind}; {}", clean(&decoded, true)))
    } else {
        Some(format!("utf-8; {}", utf8_addr_xtext(&decoded, false)))
    }
}

/// `rfc822; addr` for an ASCII address, `utf-8; <escaped>` otherwise (RFC 6533 3).
fn typed_address(addr: &str) -> String {
    if addr.is_ascii() {
        format!("rfc822; {}", clean(addr, true))
    } else {
        format!("utf-8; {}", utf8_addr_xtext(addr, false))
    }
}

/// RFC 6533 `utf-8-addr-xtext`: printable ASCII except `+`, `=`, `\` stays; everything else is
/// `\x{HEX}`. With `keep_escapes`, an existing `\x{..}` sequence is kept as it is.
fn utf8_addr_xtext(s: &str, keep_escapes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if keep_escapes && rest.starts_with("\\x{") {
            if let Some(end) = rest.find('}') {
                let hex = &rest[3..end];
                if !hex.is_empty() && hex.len() <= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push_str(&rest[..=end]);
                    rest = &rest[end + 1..];
                    continue;
                }
            }
        }
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Decode RFC 3461 4 xtext (`+XX` is the octet XX). A `+` not followed by two hex digits is
/// kept. Invalid UTF-8 is replaced.
fn xtext_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Make a status fit its action (see [`build_dsn`]).
fn fix_status(status: &str, action: DsnAction) -> String {
    let want = action.status_class();
    let parts: Vec<&str> = status.trim().split('.').collect();
    let well_formed = parts.len() == 3
        && parts[0].len() == 1
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let class = parts[0].bytes().next().map(|b| b.wrapping_sub(b'0'));
    match class {
        Some(c) if well_formed && c == want => status.trim().to_string(),
        Some(4 | 5) if well_formed && want != 2 => format!("{want}.{}.{}", parts[1], parts[2]),
        _ => format!("{want}.0.0"),
    }
}

/// The `{name}` values of the human part. Each value is cleaned of control characters (a
/// multi-line remote reply becomes one line); only `extended_reason` has line breaks, one per
/// recipient.
fn template_values(
    req: &DsnRequest<'_>,
    me: &str,
    now: &str,
    msgid: &str,
    subject: Option<&str>,
) -> Vec<(&'static str, String)> {
    let sender = format!("<{}>", clean(&req.envelope.mail_from, false));
    let recipients: Vec<String> = req
        .recipients
        .iter()
        .map(|r| format!("<{}>", clean(&r.address, false)))
        .collect();
    let extended: Vec<String> = req
        .recipients
        .iter()
        .map(|r| format!("<{}>: {}", clean(&r.address, false), clean(&r.reason(), false)))
        .collect();
    let reason = match req.reason {
        Some(r) => clean(r, false),
        None => {
            let mut distinct: Vec<String> = Vec::new();
            for r in req.recipients {
                let reason = clean(&r.reason(), false);
                if !distinct.contains(&reason) {
                    distinct.push(reason);
                }
            }
            distinct.join("; ")
        }
    };
    vec![
        ("date", now.to_string()),
        ("me", me.to_string()),
        ("from", sender.clone()),
        ("to", sender),
        ("subject", clean(subject.unwrap_or_default(), false)),
        ("recipients", recipients.join(", ")),
        ("reason", reason),
        ("extended_reason", extended.join("\n")),
        ("pid", req.pid.to_string()),
        ("msgid", msgid.to_string()),
    ]
}

/// Replace `{word}` (word = `[A-Za-z0-9_]+`) with its value, `?` when unknown or empty. In a
/// header (`header = true`) values lose even the line breaks of `extended_reason`, so no value
/// can start a new header line.
fn render(text: &str, values: &[(&'static str, String)], header: bool) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let word_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if word_len > 0 && after[word_len..].starts_with('}') {
            let word = &after[..word_len];
            let value = values
                .iter()
                .find(|(k, _)| *k == word)
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let value = if value.is_empty() { "?" } else { value };
            if header {
                out.push_str(&clean(value, false));
            } else {
                out.push_str(value);
            }
            rest = &after[word_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Control characters (CR, LF, TAB, DEL, C1 included) become spaces; with `ascii_only`
/// non-ASCII characters become `?`. Leading and trailing spaces are trimmed.
fn clean(s: &str, ascii_only: bool) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                ' '
            } else if ascii_only && !c.is_ascii() {
                '?'
            } else {
                c
            }
        })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Write `Name: value`, folded at spaces to about 78 octets; a word longer than 900 octets is
/// cut into pieces so no line passes 998. The value must already be clean (no CR/LF).
fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    let mut line_len = name.len() + 1;
    let fresh = line_len;
    for word in value.split([' ', '\t', '\r', '\n']).filter(|w| !w.is_empty()) {
        let mut w = word;
        while !w.is_empty() {
            let piece = &w[..floor_char_boundary(w, MAX_WORD)];
            if line_len > fresh && line_len + 1 + piece.len() > FOLD_AT {
                out.extend_from_slice(b"\r\n");
                line_len = 0;
            }
            out.push(b' ');
            out.extend_from_slice(piece.as_bytes());
            line_len += 1 + piece.len();
            w = &w[piece.len()..];
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// One body line of the human part: control characters other than TAB become spaces, and a
/// line over 998 octets is wrapped.
fn push_body_line(out: &mut Vec<u8>, line: &str) {
    let line: String = line
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect();
    let mut rest = line.trim_end();
    loop {
        let cut = floor_char_boundary(rest, MAX_LINE);
        out.extend_from_slice(&rest.as_bytes()[..cut]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[cut..];
        if rest.is_empty() {
            break;
        }
    }
}

/// The largest index `<= max` that is a char boundary of `s` (at least one char when `s` is
/// not empty, so callers always make progress).
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    if i == 0 {
        s.chars().next().map_or(0, char::len_utf8)
    } else {
        i
    }
}

/// The original header section for `text/rfc822-headers`: line endings made CRLF, lines over
/// 998 octets folded (the part is informational; a valid message matters more than the exact
/// bytes of a broken header).
fn header_section_part(headers: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 2);
    for line in split_lines(headers) {
        let mut rest = line;
        loop {
            let mut cut = rest.len().min(MAX_LINE - 1);
            // Do not cut inside a UTF-8 sequence.
            while cut > 0 && cut < rest.len() && (rest[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
            if cut == 0 {
                cut = rest.len().min(MAX_LINE - 1);
            }
            out.extend_from_slice(&rest[..cut]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[cut..];
            if rest.is_empty() {
                break;
            }
            out.push(b' ');
        }
    }
    out
}

/// Lines of `s` without their endings; CRLF, bare LF and bare CR all end a line.
fn split_lines(s: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\r' => {
                lines.push(&s[start..i]);
                i += if s.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                start = i;
            }
            b'\n' => {
                lines.push(&s[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// Whether the original can travel whole inside `message/rfc822` with 7bit/8bit encoding
/// (RFC 2045 2.8: CRLF lines of at most 998 octets, no NUL). Otherwise (BINARYMIME content,
/// bare CR/LF) only its headers are returned.
fn fits_in_8bit_mime(msg: &[u8]) -> bool {
    let mut c = EightBitCheck::new(false);
    c.feed(msg);
    c.ok()
}

/// Streaming check that content is valid 8BITMIME (RFC 6152): CRLF lines of at most 998
/// octets, no NUL, no bare CR or LF. `stuffed`: the input is the stored, dot-stuffed form (a
/// line starting with `.` carries one extra dot).
#[derive(Debug, Clone)]
pub struct EightBitCheck {
    stuffed: bool,
    line_len: usize,
    dotted: bool,
    cr: bool,
    bad: bool,
}

impl EightBitCheck {
    pub fn new(stuffed: bool) -> Self {
        EightBitCheck {
            stuffed,
            line_len: 0,
            dotted: false,
            cr: false,
            bad: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.bad {
                return;
            }
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    self.bad = true;
                    return;
                }
                (self.line_len, self.dotted) = (0, false);
                continue;
            }
            match b {
                0 | b'\n' => self.bad = true,
                b'\r' => self.cr = true,
                _ => {
                    if self.line_len == 0 && b == b'.' && self.stuffed {
                        self.dotted = true;
                    }
                    self.line_len += 1;
                    if self.line_len - usize::from(self.dotted) > MAX_LINE {
                        self.bad = true;
                    }
                }
            }
        }
    }

    /// Everything fed so far is valid (a trailing CR is not).
    pub fn ok(&self) -> bool {
        !self.bad && !self.cr
    }
}

/// The header section: through the CRLF of its last line, without the empty line after it.
/// A message without an empty line is all header.
fn header_section(msg: &[u8]) -> &[u8] {
    if msg.starts_with(b"\r\n") {
        return &[];
    }
    match find(msg, b"\r\n\r\n") {
        Some(i) => &msg[..i + 2],
        None => msg,
    }
}

/// The unfolded value of the first header called `name`, if any.
fn header_value(headers: &[u8], name: &str) -> Option<String> {
    let mut found: Option<Vec<u8>> = None;
    for line in split_lines(headers) {
        if let Some(v) = found.as_mut() {
            if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                v.push(b' ');
                v.extend_from_slice(line.trim_ascii());
                continue;
            }
            break;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            if line[..colon].trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
                found = Some(line[colon + 1..].trim_ascii().to_vec());
            }
        }
    }
    found.map(|v| clean(&String::from_utf8_lossy(&v), false))
}

/// The `<...>` of a Message-ID value, when it is a plausible one.
fn msg_id(v: &str) -> Option<String> {
    let start = v.find('<')?;
    let end = start + v[start..].find('>')?;
    let id = &v[start..=end];
    (id.len() > 2 && id.len() <= 250 && id.bytes().all(|b| b.is_ascii_graphic())).then(|| id.to_string())
}

/// RFC 5322 3.3 date of a ms timestamp, in UTC.
fn rfc5322_date(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(0);
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default().to_rfc2822()
}

/// Undo SMTP dot-stuffing of the stored form: a `.` at the start of a line (after CRLF) is
/// removed. Borrowed when there is nothing to undo.
pub fn unstuff(stored: &[u8]) -> Cow<'_, [u8]> {
    if !stored.starts_with(b".") && find(stored, b"\r\n.").is_none() {
        return Cow::Borrowed(stored);
    }
    let mut out = Vec::with_capacity(stored.len());
    let mut at_line_start = true;
    for (i, &b) in stored.iter().enumerate() {
        if !(at_line_start && b == b'.') {
            out.push(b);
        }
        at_line_start = b == b'\n' && i > 0 && stored[i - 1] == b'\r';
    }
    Cow::Owned(out)
}

/// SMTP dot-stuffing (RFC 5321 4.5.2): a `.` at the start of a line is doubled.
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 16);
    let mut at_line_start = true;
    for &b in msg {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// A JSON string or number as text.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A todo address without angle brackets (`""` for `<>`).
fn bare_address(a: &TodoAddress) -> String {
    let o = a.original.trim();
    let o = o.strip_prefix('<').unwrap_or(o);
    let o = o.strip_suffix('>').unwrap_or(o);
    if o.is_empty() {
        if let (Some(user), Some(host)) = (&a.user, a.original_host.as_ref().or(a.host.as_ref())) {
            return format!("{user}@{host}");
        }
    }
    o.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_check_streams_and_knows_dot_stuffing() {
        let check = |stuffed: bool, chunks: &[&[u8]]| {
            let mut c = EightBitCheck::new(stuffed);
            chunks.iter().for_each(|b| c.feed(b));
            c.ok()
        };
        assert!(check(false, &[b"a\r", b"\nb\xff\r\n"]), "CR and LF split over chunks");
        assert!(!check(false, &[b"a\nb\r\n"]), "bare LF");
        assert!(!check(false, &[b"a\rb\r\n"]), "bare CR");
        assert!(!check(false, &[b"a\0b\r\n"]), "NUL");
        assert!(!check(false, &[b"a\r"]), "ends in CR");
        let line = vec![b'x'; 998];
        let dotted = [b".".as_slice(), &line, b"\r\n"].concat();
        assert!(check(false, &[&line, b"\r\n"]));
        assert!(!check(false, &[&dotted]), "999 octets unstuffed");
        assert!(check(true, &[&dotted]), "998 octets once the stuffed dot is removed");
        assert!(!check(true, &[b"x", &dotted]), "only a leading dot is stuffing");
    }
    use mail_parser::{MessageParser, MimeHeaders, PartType};

    const ORIGINAL: &[u8] = b"Received: from client.example by mx.example\r\n\
From: Alice <alice@a.example>\r\n\
To: bob@b.example\r\n\
Subject: Quarterly\r\n report\r\n\
Message-ID: <orig-1@a.example>\r\n\
\r\n\
Hello Bob.\r\n\
..\r\n\
..leading dot\r\n\
Bye.\r\n";

    fn envelope() -> OriginalEnvelope {
        OriginalEnvelope {
            mail_from: "alice@a.example".into(),
            queue_time: 1_700_000_000_000,
            uuid: "6D1E2F3A-1.1".into(),
            envid: None,
            ret: None,
        }
    }

    fn failed_rcpt() -> RecipientReport {
        let mut r = RecipientReport::new("bob@b.example", DsnAction::Failed, "5.1.1");
        r.remote_mta = Some("mx.b.example".into());
        r.remote_ip = Some("192.0.2.7".into());
        r.diagnostic = Some(Diagnostic::Smtp {
            code: 550,
            text: "5.1.1 No such user".into(),
        });
        r.last_attempt = Some(1_700_000_100_000);
        r
    }

    fn request<'a>(env: &'a OriginalEnvelope, rcpts: &'a [RecipientReport]) -> DsnRequest<'a> {
        DsnRequest {
            me: "mx.posta.example",
            envelope: env,
            recipients: rcpts,
            original: ORIGINAL,
            template: None,
            reason: None,
            now_ms: 1_700_000_200_000,
            report_id: "rep1",
            pid: 4242,
        }
    }

    /// The message as a reader sees it (after the receiving MTA removes the stuffing).
    fn wire(dsn: &Dsn) -> Vec<u8> {
        unstuff(&dsn.message).into_owned()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Checks every DSN must pass: CRLF only, no line over 998, lone dots stuffed, and the
    /// boundary used only as delimiters, exactly once per part plus the closing one.
    fn check_shape(dsn: &Dsn, parts: usize) {
        let m = &dsn.message;
        assert!(m.ends_with(b"\r\n"));
        let lines: Vec<&[u8]> = m.split(|&b| b == b'\n').collect();
        for l in &lines[..lines.len() - 1] {
            assert!(l.ends_with(b"\r"), "bare LF in {:?}", text(l));
            assert!(l.len() - 1 <= MAX_LINE + 1, "line of {} octets", l.len() - 1);
            assert!(!l[..l.len() - 1].contains(&b'\r'), "bare CR");
            assert_ne!(*l, b".\r", "unstuffed lone dot");
        }
        let w = wire(dsn);
        for l in w.split(|&b| b == b'\n') {
            assert!(l.len() <= MAX_LINE + 1, "line of {} octets", l.len());
        }
        let s = text(&w);
        let b = boundary_of(&s);
        assert!(b.len() <= 70);
        let opens = s.matches(&format!("\r\n--{b}\r\n")).count();
        let close = s.matches(&format!("\r\n--{b}--\r\n")).count();
        assert_eq!((opens, close), (parts, 1), "boundary {b}");
        assert_eq!(
            s.matches(b.as_str()).count(),
            parts + 2,
            "boundary only in Content-Type and delimiters"
        );
    }

    fn boundary_of(s: &str) -> String {
        let i = s.find("boundary=\"").unwrap() + 10;
        s[i..i + s[i..].find('"').unwrap()].to_string()
    }

    fn status_part(w: &[u8]) -> String {
        let msg = MessageParser::default().parse(w).unwrap();
        let part = msg
            .parts
            .iter()
            .find(|p| p.is_content_type("message", "delivery-status"))
            .expect("a message/delivery-status part");
        text(part.contents())
    }

    #[test]
    fn failure_report_has_three_parts_and_the_rfc_3464_fields() {
        let env = envelope();
        let rcpts = [failed_rcpt()];
        let dsn = build_dsn(&request(&env, &rcpts));
        assert_eq!(dsn.kind, ReportKind::Failure);
        assert_eq!(dsn.message_id, "<rep1@mx.posta.example>");
        assert!(!dsn.eight_bit && !dsn.utf8_headers);
        check_shape(&dsn, 3);

        let w = wire(&dsn);
        let msg = MessageParser::default().parse(&w[..]).unwrap();
        assert_eq!(msg.subject(), Some("failure notice"));
        assert_eq!(
            msg.from().unwrap().first().unwrap().address(),
            Some("MAILER-DAEMON@mx.posta.example")
        );
        assert_eq!(msg.to().unwrap().first().unwrap().address(), Some("alice@a.example"));
        assert_eq!(msg.message_id(), Some("rep1@mx.posta.example"));
        assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-replied"));
        assert_eq!(msg.header_raw("References").map(str::trim), Some("<orig-1@a.example>"));
        let ct = msg.root_part().content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

        let PartType::Multipart(ids) = &msg.root_part().body else {
            panic!("not multipart")
        };
        assert_eq!(ids.len(), 3);
        let kinds: Vec<(String, String)> = ids
            .iter()
            .map(|&i| {
                let ct = msg.parts[i as usize].content_type().unwrap();
                (ct.ctype().to_string(), ct.subtype().unwrap_or("").to_string())
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("text", "plain"),
                ("message", "delivery-status"),
                ("text", "rfc822-headers")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );

        let human = msg.body_text(0).unwrap();
        assert!(human.contains("at mx.posta.example"), "{human}");
        assert!(human.contains("Intended Recipients: <bob@b.example>"), "{human}");
        assert!(human.contains("Failure Reason: 550 5.1.1 No such user"), "{human}");

        let status = status_part(&w);
        let want = [
            "Reporting-MTA: dns; mx.posta.example\r\n",
            "X-Posta-Queue-ID: 6D1E2F3A-1.1\r\n",
            "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n",
            "\r\n\r\nFinal-Recipient: rfc822; bob@b.example\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            "Remote-MTA: dns; mx.b.example\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n",
            "Last-Attempt-Date: Tue, 14 Nov 2023 22:15:00 +0000\r\n",
        ];
        for w in want {
            assert!(status.contains(w), "{w:?} not in\n{status}");
        }
        assert!(!status.contains("Original-Envelope-Id"), "no ENVID given");
        assert!(!status.contains("Original-Recipient"), "no ORCPT given");

        let headers = text(msg.parts[ids[2] as usize].contents());
        assert!(headers.starts_with("Received: from client.example"), "{headers}");
        assert!(headers.contains("Subject: Quarterly\r\n report\r\n"), "{headers}");
        assert!(!headers.contains("Hello Bob"), "headers only by default");
    }

    #[test]
    fn ret_full_returns_the_whole_original_unstuffed_and_restuffed() {
        let mut env = envelope();
        env.ret = Some(Ret::Full);
        let rcpts = [failed_rcpt()];
        let dsn = build_dsn(&request(&env, &rcpts));
        check_shape(&dsn, 3);
        // The lone dot of the original is stored stuffed in the DSN too.
        assert!(contains(&dsn.message, b"\r\nHello Bob.\r\n..\r\n..leading dot\r\n"));

        let w = wire(&dsn);
        let msg = MessageParser::default().parse(&w[..]).unwrap();
        let PartType::Multipart(ids) = &msg.root_part().body else {
            panic!("not multipart")
        };
        let part = &msg.parts[ids[2] as usize];
        assert!(part.is_content_type("message", "rfc822"));
        let inner = part.message().expect("a nested message");
        assert_eq!(inner.subject(), Some("Quarterly report"));
        assert_eq!(
            inner.body_text(0).unwrap(),
            "Hello Bob.\r\n.\r\n.leading dot\r\nBye.\r\n"
        );
        // Byte for byte the original, as the sender wrote it.
        assert_eq!(part.contents(), &unstuff(ORIGINAL)[..]);
    }

    #[test]
    fn ret_full_is_headers_only_for_delays_and_unsafe_originals() {
        let mut env = envelope();
        env.ret = Some(Ret::Full);
        let mut delayed = failed_rcpt();
        delayed.action = DsnAction::Delayed;
        delayed.status = "4.4.1".into();
        delayed.will_retry_until = Some(1_700_259_200_000);
        let rcpts = [delayed];
        let dsn = build_dsn(&request(&env, &rcpts));
        assert_eq!(dsn.kind, ReportKind::Delay);
        check_shape(&dsn, 3);
        let w = wire(&dsn);
        let msg = MessageParser::default().parse(&w[..]).unwrap();
        assert_eq!(msg.subject(), Some("delayed mail"));
        assert!(text(&w).contains("Content-Type: text/rfc822-headers"));
        let status = status_part(&w);
        assert!(status.contains("Action: delayed\r\nStatus: 4.4.1\r\n"), "{status}");
        assert!(
            status.contains("Will-Retry-Until: Fri, 17 Nov 2023 22:13:20 +0000\r\n"),
            "{status}"
        );

        // A 2000-octet line cannot travel in message/rfc822 with 8bit encoding.
        let mut long = b"Subject: long\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 2000));
        long.extend_from_slice(b"\r\n");
        let rcpts = [failed_rcpt()];
        let mut req = request(&env, &rcpts);
        req.original = &long;
        let dsn = build_dsn(&req);
        check_shape(&dsn, 3);
        assert!(text(&dsn.message).contains("Content-Type: text/rfc822-headers"));
    }

    #[test]
    fn envid_and_orcpt_are_decoded_from_xtext() {
        let mut env = envelope();
        env.envid = Some("abc+2B1".into());
        let mut r = failed_rcpt();
        r.orcpt = Some("rfc822;x+40y.z".into());
        let mut r2 = RecipientReport::new("carol@b.example", DsnAction::Failed, "5.2.2");
        r2.orcpt = Some("utf-8;j\u{f6}rg@b.example".into());
        let rcpts = [r, r2];
        let dsn = build_dsn(&request(&env, &rcpts));
        check_shape(&dsn, 3);
        let status = status_part(&wire(&dsn));
        assert!(
            status.starts_with("Original-Envelope-Id: abc+1\r\nReporting-MTA:"),
            "{status}"
        );
        assert!(status.contains("\r\n\r\nOriginal-Recipient: rfc822; x@y.z\r\nFinal-Recipient: rfc822; bob@b.example"));
        assert!(
            status.contains("Original-Recipient: utf-8; j\\x{F6}rg@b.example\r\n"),
            "{status}"
        );
        assert!(status.is_ascii());
    }

    #[test]
    fn utf8_recipient_is_escaped_in_the_status_part() {
        let env = envelope();
        let mut r = RecipientReport::new("j\u{f6}rg@b.example", DsnAction::Failed, "5.1.1");
        r.diagnostic = Some(Diagnostic::Smtp {
            code: 550,
            text: "unbekannter Empf\u{e4}nger".into(),
        });
        let rcpts = [r];
        let dsn = build_dsn(&request(&env, &rcpts));
        check_shape(&dsn, 3);
        assert!(dsn.eight_bit, "the human part names the recipient in UTF-8");
        let w = wire(&dsn);
        let status = status_part(&w);
        assert!(
            status.contains("Final-Recipient: utf-8; j\\x{F6}rg@b.example\r\n"),
            "{status}"
        );
        assert!(
            status.contains("Diagnostic-Code: smtp; 550 unbekannter Empf?nger\r\n"),
            "{status}"
        );
        let msg = MessageParser::default().parse(&w[..]).unwrap();
        assert!(msg.body_text(0).unwrap().contains("<j\u{f6}rg@b.example>"));
        assert!(text(&w).contains("Content-Type: text/plain; charset=utf-8"));
    }

    #[test]
    fn remote_text_cannot_inject_headers() {
        let mut env = envelope();
        env.mail_from = "alice@a.example\r\nBcc: victim@evil.example".into();
        let mut r = failed_rcpt();
        r.address = "bob@b.example\r\nX-Injected: 1".into();
        r.remote_mta = Some("mx.b.example\r\nX-Injected: 2".into());
        r.diagnostic = Some(Diagnostic::Smtp {
            code: 550,
            text: "no\r\nX-Injected: 3\r\n\r\nbody".into(),
        });
        let rcpts = [r];
        let template =
            BounceTemplate::parse("To: {to}\nSubject: bounce of {subject}\nX-Reason: {reason}\n\n{reason}\n").unwrap();
        let original = b"Subject: hi\r\n there\r\nX-Injected: 4\r\n\r\nbody\r\n";
        let mut req = request(&env, &rcpts);
        req.template = Some(&template);
        req.original = original;
        req.me = "me.example\r\nX-Injected: 5";
        let dsn = build_dsn(&req);
        check_shape(&dsn, 3);
        let w = text(&wire(&dsn));
        for l in w.split("\r\n") {
            assert!(!l.starts_with("Bcc:"), "{l}");
            // Only the copy of the original's own header (part 3) may start a line.
            if l.starts_with("X-Injected:") {
                assert_eq!(l, "X-Injected: 4");
            }
        }
        let msg = MessageParser::default().parse(w.as_bytes()).unwrap();
        assert_eq!(msg.subject(), Some("bounce of hi there"));
        assert!(msg.header("Bcc").is_none());
    }

    #[test]
    fn long_remote_text_is_folded_under_998_octets() {
        let env = envelope();
        let mut r = failed_rcpt();
        let long_word = "y".repeat(3000);
        r.diagnostic = Some(Diagnostic::Smtp {
            code: 550,
            text: format!("{} {long_word}", "word ".repeat(400)),
        });
        let rcpts = [r];
        let mut long_header = b"Subject: s\r\nX-Long: ".to_vec();
        long_header.extend(std::iter::repeat_n(b'h', 2500));
        long_header.extend_from_slice(b"\r\n\r\nbody\r\n");
        let mut req = request(&env, &rcpts);
        req.original = &long_header;
        let dsn = build_dsn(&req);
        check_shape(&dsn, 3);
        let status = status_part(&wire(&dsn));
        let unfolded = status.replace("\r\n ", " ");
        assert!(unfolded.contains("Diagnostic-Code: smtp; 550 word word"), "{unfolded}");
    }

    #[test]
    fn boundary_avoids_content_that_contains_it() {
        let env = envelope();
        let rcpts = [failed_rcpt()];
        let original = b"Subject: trap\r\nX-Trap: --posta_dsn_rep1\r\n\r\n--posta_dsn_rep1--\r\n";
        let mut req = request(&env, &rcpts);
        req.original = original;
        let dsn = build_dsn(&req);
        check_shape(&dsn, 3);
        assert_eq!(boundary_of(&text(&dsn.message)), "posta_dsn_rep1_1");
        let w = wire(&dsn);
        let msg = MessageParser::default().parse(&w[..]).unwrap();
        let PartType::Multipart(ids) = &msg.root_part().body else {
            panic!("not multipart")
        };
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn status_is_made_to_fit_the_action() {
        assert_eq!(fix_status("5.1.1", DsnAction::Failed), "5.1.1");
        assert_eq!(fix_status("4.4.1", DsnAction::Failed), "5.4.1");
        assert_eq!(fix_status("5.7.1", DsnAction::Delayed), "4.7.1");
        assert_eq!(fix_status("3.0.0", DsnAction::Delayed), "4.0.0");
        assert_eq!(fix_status("", DsnAction::Failed), "5.0.0");
        assert_eq!(fix_status("5.1234.1", DsnAction::Failed), "5.0.0");
        assert_eq!(fix_status("5.1.1 (bad)", DsnAction::Failed), "5.0.0");
        assert_eq!(fix_status("2.0.0", DsnAction::Delivered), "2.0.0");
        assert_eq!(fix_status("5.1.1", DsnAction::Relayed), "2.0.0");
    }

    #[test]
    fn success_report_and_other_diagnostics() {
        let env = envelope();
        let mut ok = RecipientReport::new("bob@b.example", DsnAction::Delivered, "2.0.0");
        ok.remote_ip = Some("192.0.2.9".into());
        let mut relayed = RecipientReport::new("dan@b.example", DsnAction::Relayed, "2.0.0");
        relayed.diagnostic = Some(Diagnostic::Other("relayed to a non-DSN MTA".into()));
        let rcpts = [ok, relayed];
        let dsn = build_dsn(&request(&env, &rcpts));
        assert_eq!(dsn.kind, ReportKind::Success);
        check_shape(&dsn, 3);
        let w = wire(&dsn);
        assert_eq!(
            MessageParser::default().parse(&w[..]).unwrap().subject(),
            Some("delivery report")
        );
        let status = status_part(&w);
        assert!(status.contains("Remote-MTA: dns; [192.0.2.9]\r\n"), "{status}");
        assert!(
            status.contains("Diagnostic-Code: X-Posta; relayed to a non-DSN MTA\r\n"),
            "{status}"
        );
        assert_eq!(status.matches("Final-Recipient:").count(), 2);
    }

    #[test]
    fn template_placeholders_and_missing_headers() {
        let t = BounceTemplate::parse(
            "Subject: Undeliverable: {subject}\r\nContent-Type: text/html\r\nX-Who: {nobody} {pid}\r\n  continued {me}\r\n\r\n{recipients} / {extended_reason} / {from} {to} {msgid} {date}\r\n{ not a placeholder} {}\r\n\r\n",
        )
        .unwrap();
        let env = envelope();
        let rcpts = [
            failed_rcpt(),
            RecipientReport::new("eve@b.example", DsnAction::Failed, "5.0.0"),
        ];
        let mut req = request(&env, &rcpts);
        req.template = Some(&t);
        let dsn = build_dsn(&req);
        check_shape(&dsn, 3);
        let w = wire(&dsn);
        let s = text(&w);
        let msg = MessageParser::default().parse(&w[..]).unwrap();
        assert_eq!(msg.subject(), Some("Undeliverable: Quarterly report"));
        assert_eq!(
            msg.header_raw("X-Who").map(str::trim),
            Some("? 4242 continued mx.posta.example")
        );
        // Added because the template lacks them.
        assert!(msg.date().is_some());
        assert_eq!(
            msg.from().unwrap().first().unwrap().address(),
            Some("MAILER-DAEMON@mx.posta.example")
        );
        assert_eq!(msg.message_id(), Some("rep1@mx.posta.example"));
        assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-replied"));
        // The template's Content-Type is dropped; the report's own is the only one at top level.
        assert!(!s.contains("text/html"));
        let body = msg.body_text(0).unwrap();
        assert!(
            body.starts_with(
                "<bob@b.example>, <eve@b.example> / <bob@b.example>: 550 5.1.1 No such user\r\n\
                 <eve@b.example>: failed (5.0.0) / <alice@a.example> <alice@a.example> <rep1@mx.posta.example> Tue, 14 Nov 2023 22:16:40 +0000\r\n\
                 { not a placeholder} {}"
            ),
            "{body:?}"
        );
    }

    #[test]
    fn template_errors_name_the_line() {
        assert!(BounceTemplate::parse("Subject: x\nnot a header\n\nbody")
            .unwrap_err()
            .contains("line 2"));
        assert!(BounceTemplate::parse(" continued\n\nbody")
            .unwrap_err()
            .contains("line 1"));
        assert!(BounceTemplate::parse("Bad Name: x\n").is_err());
        for kind in [ReportKind::Failure, ReportKind::Delay, ReportKind::Success] {
            let t = BounceTemplate::default_for(kind);
            assert!(t.headers.iter().any(|(n, v)| n == "From" && v == "MAILER-DAEMON@{me}"));
            assert!(t
                .headers
                .iter()
                .any(|(n, v)| n == "Auto-Submitted" && v == "auto-replied"));
            assert!(!t.body.is_empty());
        }
    }

    #[test]
    fn notify_rules() {
        use DsnAction::*;
        let none: Option<&[&str]> = None;
        assert!(should_notify(none, Failed));
        assert!(!should_notify(none, Delayed));
        assert!(!should_notify(none, Delivered));
        assert!(should_notify(Some(&[] as &[&str]), Failed));
        assert!(!should_notify(Some(&["NEVER"]), Failed));
        assert!(!should_notify(Some(&["never"]), Delayed));
        assert!(should_notify(Some(&["SUCCESS"]), Delivered));
        assert!(should_notify(Some(&["SUCCESS"]), Relayed));
        assert!(!should_notify(Some(&["SUCCESS"]), Failed));
        assert!(should_notify(Some(&["FAILURE", "DELAY"]), Delayed));
        assert!(should_notify(Some(&["delay", "failure"]), Failed));
        assert!(!should_notify(Some(&["FAILURE"]), Delayed));
    }

    fn todo_from_json(j: &str) -> Todo {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn reads_the_queue_file_todo() {
        let todo = todo_from_json(
            r#"{"queue_time": 1700000000000, "domain": "b.example",
                "rcpt_to": [{"original": "<bob@B.example>", "original_host": "B.example", "host": "b.example",
                             "user": "bob", "dsn_notify": ["SUCCESS", "FAILURE"], "dsn_orcpt": "rfc822;bob+40b.example",
                             "dsn_status": "5.1.1", "dsn_smtp_code": 550, "dsn_smtp_extc": "5.1.1",
                             "dsn_smtp_response": "No such user", "dsn_remote_mta": "mx.b.example"},
                            {"original": "<eve@b.example>", "original_host": "b.example", "host": "b.example",
                             "user": "eve", "dsn_notify": ["NEVER"], "reason": "Too many failures"}],
                "mail_from": {"original": "<alice@a.example>", "original_host": "a.example", "host": "a.example", "user": "alice"},
                "notes": {}, "uuid": "U-1.1", "dsn_ret": "FULL", "dsn_envid": "e+2B1"}"#,
        );
        let env = OriginalEnvelope::from_todo(&todo);
        assert_eq!(env.mail_from, "alice@a.example");
        assert_eq!(env.ret, Some(Ret::Full));
        assert_eq!(env.envid.as_deref(), Some("e+2B1"));
        assert_eq!(env.uuid, "U-1.1");
        assert!(!is_null_sender(&todo.mail_from));

        let bob = &todo.rcpt_to[0];
        let r = RecipientReport::from_todo_address(bob, DsnAction::Failed);
        assert_eq!(r.address, "bob@B.example");
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;bob+40b.example"));
        assert_eq!(r.status, "5.1.1");
        assert_eq!(r.remote_mta.as_deref(), Some("mx.b.example"));
        assert_eq!(
            r.diagnostic,
            Some(Diagnostic::Smtp {
                code: 550,
                text: "5.1.1 No such user".into()
            })
        );
        assert!(rcpt_should_notify(bob, DsnAction::Delivered));
        assert!(!rcpt_should_notify(bob, DsnAction::Delayed));

        let eve = &todo.rcpt_to[1];
        let r = RecipientReport::from_todo_address(eve, DsnAction::Failed);
        assert_eq!(r.diagnostic, Some(Diagnostic::Other("Too many failures".into())));
        assert!(!rcpt_should_notify(eve, DsnAction::Failed));
        assert_eq!(notify_keywords(eve), Some(vec!["NEVER".to_string()]));
    }

    #[test]
    fn null_sender() {
        assert!(is_null_sender(&TodoAddress::from_mailbox(None)));
        let m = crate::protocol::address::Mailbox {
            local: "a".into(),
            domain: "b.example".into(),
        };
        assert!(!is_null_sender(&TodoAddress::from_mailbox(Some(&m))));
        let postmaster = crate::protocol::address::Mailbox {
            local: "postmaster".into(),
            domain: String::new(),
        };
        assert!(!is_null_sender(&TodoAddress::from_mailbox(Some(&postmaster))));
    }

    #[test]
    fn stuffing_round_trip() {
        assert_eq!(&unstuff(b"..\r\n...x\r\n.\r\na.b\r\n")[..], b".\r\n..x\r\n\r\na.b\r\n");
        assert!(matches!(unstuff(b"a\r\nb.\r\n"), Cow::Borrowed(_)));
        assert_eq!(dot_stuff(b".\r\n..x\r\na.b\r\n"), b"..\r\n...x\r\na.b\r\n");
        let m = b".a\r\nb\r\n.\r\n";
        assert_eq!(&unstuff(&dot_stuff(m))[..], m);
    }

    #[test]
    fn message_without_body_or_headers() {
        let env = envelope();
        let rcpts = [failed_rcpt()];
        for original in [
            &b""[..],
            b"\r\nbody only\r\n",
            b"Subject: no body\r\n",
            b"Subject: bare\nlf\r\n\r\nx",
        ] {
            let mut req = request(&env, &rcpts);
            req.original = original;
            let dsn = build_dsn(&req);
            check_shape(&dsn, 3);
            assert!(MessageParser::default().parse(&wire(&dsn)[..]).is_some());
        }
    }
}
