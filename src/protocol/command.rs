//! SMTP command parser (RFC 5321 4.1, with the MAIL/RCPT parameters of RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 3030 CHUNKING/BINARYMIME, RFC 6531 SMTPUTF8 and RFC 3461 DSN).
//!
//! Parsing is two-step: [`parse_command`] splits a line into a verb and its argument text,
//! and [`parse_mail`] / [`parse_rcpt`] parse the paths and parameters with the session's
//! rules (SMTPUTF8 given on MAIL, strict brackets, EHLO seen). Every failure is a
//! [`Reply`] the session can send as it is.

use super::address::{parse_path, AddressError, Mailbox, PathRules};
use super::reply::Reply;
use serde::{Deserialize, Serialize};

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a str),
    Ehlo(&'a str),
    /// Argument text after `MAIL`, parsed later by [`parse_mail`].
    Mail(&'a str),
    /// Argument text after `RCPT`, parsed later by [`parse_rcpt`].
    Rcpt(&'a str),
    Data(&'a str),
    Bdat(&'a str),
    Rset(&'a str),
    Noop,
    Quit(&'a str),
    Vrfy(&'a str),
    Help,
    /// `AUTH mechanism [initial-response]` (RFC 4954), argument text as sent.
    Auth(&'a str),
    /// `STARTTLS` (RFC 3207) with whatever followed it (must be nothing).
    StartTls(&'a str),
    /// A PROXY protocol v1 line inside the SMTP session (not from a listed proxy).
    Proxy(&'a str),
    /// Postfix XCLIENT (only when the `xclient` plugin is listed).
    Xclient(&'a str),
    /// Anything else; goes to the `unrecognized_command` hook with verb and arguments.
    Unknown {
        verb: &'a str,
        args: &'a str,
    },
}

impl Command<'_> {
    /// The verb in upper case, for logs and pipelining rules.
    pub fn verb(&self) -> &str {
        match self {
            Command::Helo(_) => "HELO",
            Command::Ehlo(_) => "EHLO",
            Command::Mail(_) => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data(_) => "DATA",
            Command::Bdat(_) => "BDAT",
            Command::Rset(_) => "RSET",
            Command::Noop => "NOOP",
            Command::Quit(_) => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Help => "HELP",
            Command::Auth(_) => "AUTH",
            Command::StartTls(_) => "STARTTLS",
            Command::Proxy(_) => "PROXY",
            Command::Xclient(_) => "XCLIENT",
            Command::Unknown { .. } => "UNKNOWN",
        }
    }
}

/// Why a line is not a command at all (checked before any hook sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// NUL byte in a command line.
    Nul,
    /// A TLS ClientHello on a plain-text port.
    TlsHello,
    /// Bytes that are not UTF-8, or non-ASCII where it is not allowed.
    EightBit,
    /// A bare CR inside the line.
    BareCr,
}

impl LineError {
    /// The reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            LineError::Nul => Reply::ext(500, (5, 5, 2), "Syntax error (NUL characters not allowed)"),
            LineError::TlsHello => Reply::ext(501, (5, 5, 1), "SSL attempted over a non-SSL socket"),
            LineError::EightBit => Reply::ext(500, (5, 5, 2), "Syntax error (8-bit characters not allowed)"),
            LineError::BareCr => Reply::ext(500, (5, 5, 2), "Syntax error (bare CR in command)"),
        }
    }
}

/// Check the raw bytes of a command line (without its line ending) and return it as text.
/// 8-bit bytes are allowed only when `utf8_ok` (after EHLO, as Haraka does) and must be UTF-8.
pub fn check_line(line: &[u8], utf8_ok: bool) -> Result<&str, LineError> {
    if line.starts_with(&[0x16, 0x03]) {
        return Err(LineError::TlsHello);
    }
    if memchr::memchr(0, line).is_some() {
        return Err(LineError::Nul);
    }
    if memchr::memchr(b'\r', line).is_some() {
        return Err(LineError::BareCr);
    }
    if line.is_ascii() {
        // SAFETY-free: ASCII is valid UTF-8.
        return std::str::from_utf8(line).map_err(|_| LineError::EightBit);
    }
    if !utf8_ok {
        return Err(LineError::EightBit);
    }
    std::str::from_utf8(line).map_err(|_| LineError::EightBit)
}

/// Split a checked line into a command.
pub fn parse_command(line: &str) -> Command<'_> {
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_matches(' ')),
        None => (line, ""),
    };
    let is = |v: &str| verb.eq_ignore_ascii_case(v);
    if is("HELO") {
        Command::Helo(args)
    } else if is("EHLO") {
        Command::Ehlo(args)
    } else if is("MAIL") {
        Command::Mail(args)
    } else if is("RCPT") {
        Command::Rcpt(args)
    } else if is("DATA") {
        Command::Data(args)
    } else if is("BDAT") {
        Command::Bdat(args)
    } else if is("RSET") {
        Command::Rset(args)
    } else if is("NOOP") {
        Command::Noop
    } else if is("QUIT") {
        Command::Quit(args)
    } else if is("VRFY") {
        Command::Vrfy(args)
    } else if is("HELP") {
        Command::Help
    } else if is("AUTH") {
        Command::Auth(args)
    } else if is("STARTTLS") {
        Command::StartTls(args)
    } else if is("PROXY") {
        Command::Proxy(args)
    } else if is("XCLIENT") {
        Command::Xclient(args)
    } else {
        Command::Unknown { verb, args }
    }
}

/// BODY= values (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    #[serde(rename = "7BIT")]
    SevenBit,
    #[serde(rename = "8BITMIME")]
    EightBitMime,
    #[serde(rename = "BINARYMIME")]
    BinaryMime,
}

/// RET= values (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    #[serde(rename = "FULL")]
    Full,
    #[serde(rename = "HDRS")]
    Hdrs,
}

/// Parameters of MAIL FROM, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID, still xtext-encoded as on the wire (RFC 3461 4.4).
    pub envid: Option<String>,
}

/// NOTIFY= (RFC 3461 4.1): NEVER, or any of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// The keywords in RFC 3461 order, for the queue file.
    pub fn keywords(&self) -> Vec<&'static str> {
        if self.never {
            return vec!["NEVER"];
        }
        let mut v = Vec::new();
        if self.success {
            v.push("SUCCESS");
        }
        if self.failure {
            v.push("FAILURE");
        }
        if self.delay {
            v.push("DELAY");
        }
        v
    }
}

/// Parameters of RCPT TO, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// ORCPT as `addr-type;xtext` (RFC 3461 4.2), kept encoded.
    pub orcpt: Option<String>,
}

/// What the session knows when it parses MAIL/RCPT.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext {
    /// EHLO (not HELO) was given, so ESMTP parameters are allowed.
    pub esmtp: bool,
    /// `strict_rfc1869`: brackets required, no space after the colon.
    pub strict: bool,
    /// SMTPUTF8 is advertised.
    pub smtputf8_offered: bool,
    /// SMTPUTF8 was given on this transaction's MAIL (for RCPT).
    pub utf8_txn: bool,
    /// `max.bytes`; 0 means no limit.
    pub max_bytes: u64,
}

/// Parse `FROM:<path> params` of MAIL.
pub fn parse_mail(args: &str, cx: ParseContext) -> Result<(Option<Mailbox>, MailParams), Reply> {
    let rest = strip_keyword(args, "FROM:", cx.strict)
        .ok_or_else(|| Reply::ext(501, (5, 5, 4), "Syntax: MAIL FROM:<address> [parameters]"))?;
    let (path, params) = split_path(rest);
    let mut p = MailParams::default();
    for_each_param(params, cx.esmtp, |key, value| apply_mail_param(&mut p, key, value, cx))?;
    let rules = PathRules {
        utf8: p.smtputf8,
        strict: cx.strict,
        rcpt: false,
    };
    let mailbox = parse_path(path, rules).map_err(|e| address_reply(e, "MAIL FROM", (5, 1, 7)))?;
    Ok((mailbox, p))
}

/// Parse `TO:<path> params` of RCPT.
pub fn parse_rcpt(args: &str, cx: ParseContext) -> Result<(Mailbox, RcptParams), Reply> {
    let rest = strip_keyword(args, "TO:", cx.strict)
        .ok_or_else(|| Reply::ext(501, (5, 5, 4), "Syntax: RCPT TO:<address> [parameters]"))?;
    let (path, params) = split_path(rest);
    let mut p = RcptParams::default();
    for_each_param(params, cx.esmtp, |key, value| apply_rcpt_param(&mut p, key, value))?;
    let rules = PathRules {
        utf8: cx.utf8_txn,
        strict: cx.strict,
        rcpt: true,
    };
    match parse_path(path, rules) {
        Ok(Some(m)) => Ok((m, p)),
        Ok(None) => Err(Reply::ext(501, (5, 1, 3), "Invalid RCPT TO address: empty recipient")),
        Err(e) => Err(address_reply(e, "RCPT TO", (5, 1, 3))),
    }
}

fn address_reply(e: AddressError, what: &str, code: (u8, u16, u16)) -> Reply {
    match e {
        AddressError::NeedsUtf8 => Reply::ext(553, (5, 6, 7), format!("Non-ASCII {what} address needs SMTPUTF8")),
        other => Reply::ext(501, code, format!("Invalid {what} address: {other}")),
    }
}

fn strip_keyword<'a>(args: &'a str, kw: &str, strict: bool) -> Option<&'a str> {
    let head = args.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    let rest = &args[kw.len()..];
    if strict && rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim_start_matches(' '))
}

/// Split `<path> params` into the path and the parameter text. A bracketed path ends at the
/// `>` that is not inside a quoted local part; an unbracketed one at the first space.
fn split_path(s: &str) -> (&str, &str) {
    if s.starts_with('<') {
        let bytes = s.as_bytes();
        let (mut i, mut quoted) = (1, false);
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'>' if !quoted => return (&s[..=i], &s[i + 1..]),
                _ => {}
            }
            i += 1;
        }
        return (s, "");
    }
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Walk `KEY[=VALUE]` parameters separated by spaces. The text right after the path must be
/// empty or start with a space (`<a@b>SIZE=1` is a syntax error).
fn for_each_param<F>(params: &str, esmtp: bool, mut f: F) -> Result<(), Reply>
where
    F: FnMut(&str, Option<&str>) -> Result<(), Reply>,
{
    if params.is_empty() {
        return Ok(());
    }
    if !params.starts_with(' ') {
        return Err(Reply::ext(501, (5, 5, 4), "Syntax error after address"));
    }
    if !esmtp {
        return Err(Reply::ext(555, (5, 5, 4), "Invalid command parameters"));
    }
    let mut seen: Vec<String> = Vec::new();
    for word in params.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
                || (!v.is_ascii() && !v.contains('=') && !v.chars().any(char::is_control))
        });
        if !key_ok || !value_ok {
            return Err(Reply::ext(
                501,
                (5, 5, 4),
                format!("Syntax error in parameter {}", sanitize(word)),
            ));
        }
        let upper = key.to_ascii_uppercase();
        if seen.contains(&upper) {
            return Err(Reply::ext(501, (5, 5, 4), format!("Duplicate parameter {upper}")));
        }
        f(&upper, value)?;
        seen.push(upper);
    }
    Ok(())
}

fn sanitize(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}

fn bad_value(key: &str) -> Reply {
    Reply::ext(501, (5, 5, 4), format!("Bad value for {key} parameter"))
}

fn unsupported(key: &str) -> Reply {
    Reply::ext(555, (5, 5, 4), format!("Unsupported parameter {key}"))
}

fn need_value<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, Reply> {
    v.ok_or_else(|| bad_value(key))
}

fn apply_mail_param(p: &mut MailParams, key: &str, v: Option<&str>, cx: ParseContext) -> Result<(), Reply> {
    match key {
        "SIZE" => {
            let v = need_value(key, v)?;
            if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad_value(key));
            }
            let n = v.parse::<u64>().unwrap_or(u64::MAX);
            if cx.max_bytes > 0 && n > cx.max_bytes {
                return Err(Reply::ext(552, (5, 3, 4), "Message too big!"));
            }
            p.size = Some(n);
        }
        "BODY" => {
            let v = need_value(key, v)?;
            p.body = Some(match v.to_ascii_uppercase().as_str() {
                "7BIT" => Body::SevenBit,
                "8BITMIME" => Body::EightBitMime,
                "BINARYMIME" => Body::BinaryMime,
                _ => return Err(bad_value(key)),
            });
        }
        "SMTPUTF8" => {
            if v.is_some() {
                return Err(bad_value(key));
            }
            if !cx.smtputf8_offered {
                return Err(unsupported(key));
            }
            p.smtputf8 = true;
        }
        "RET" => {
            let v = need_value(key, v)?;
            p.ret = Some(match v.to_ascii_uppercase().as_str() {
                "FULL" => Ret::Full,
                "HDRS" => Ret::Hdrs,
                _ => return Err(bad_value(key)),
            });
        }
        "ENVID" => {
            let v = need_value(key, v)?;
            if v.len() > 100 || !is_xtext(v) {
                return Err(bad_value(key));
            }
            p.envid = Some(v.to_string());
        }
        other => return Err(unsupported(other)),
    }
    Ok(())
}

fn apply_rcpt_param(p: &mut RcptParams, key: &str, v: Option<&str>) -> Result<(), Reply> {
    match key {
        "NOTIFY" => {
            let v = need_value(key, v)?;
            let mut n = Notify::default();
            for word in v.split(',') {
                match word.to_ascii_uppercase().as_str() {
                    "NEVER" => n.never = true,
                    "SUCCESS" => n.success = true,
                    "FAILURE" => n.failure = true,
                    "DELAY" => n.delay = true,
                    _ => return Err(bad_value(key)),
                }
            }
            // RFC 3461 4.1: NEVER must appear alone.
            if n.never && (n.success || n.failure || n.delay) {
                return Err(bad_value(key));
            }
            p.notify = Some(n);
        }
        "ORCPT" => {
            let v = need_value(key, v)?;
            let ok = match v.split_once(';') {
                Some((kind, addr)) => {
                    !kind.is_empty()
                        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !addr.is_empty()
                        && v.len() <= 500
                        && (is_xtext(addr)
                            || (kind.eq_ignore_ascii_case("utf-8") && !addr.chars().any(char::is_control)))
                }
                None => false,
            };
            if !ok {
                return Err(bad_value(key));
            }
            p.orcpt = Some(v.to_string());
        }
        other => return Err(unsupported(other)),
    }
    Ok(())
}

/// RFC 3461 4: xtext is printable ASCII except `+` and `=`, with `+XX` hex escapes.
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(b.get(i + 1).copied().is_some_and(hex) && b.get(i + 2).copied().is_some_and(hex)) {
                    return false;
                }
                i += 3;
            }
            33..=126 if b[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decode xtext (`+XX` escapes), for passing DSN values on.
pub fn xtext_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// BDAT arguments: `size [LAST]` (RFC 3030 2). `None` when they do not parse, in which case the
/// chunk cannot be skipped and the session must treat the line as a syntax error.
pub fn parse_bdat(args: &str) -> Option<(u64, bool)> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse::<u64>().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some((size, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CX: ParseContext = ParseContext {
        esmtp: true,
        strict: false,
        smtputf8_offered: true,
        utf8_txn: false,
        max_bytes: 1000,
    };

    #[test]
    fn verbs() {
        assert_eq!(parse_command("ehlo x.org"), Command::Ehlo("x.org"));
        assert_eq!(parse_command("MAIL FROM:<a@b.c>"), Command::Mail("FROM:<a@b.c>"));
        assert_eq!(parse_command("noop"), Command::Noop);
        assert_eq!(
            parse_command("EXPN x"),
            Command::Unknown {
                verb: "EXPN",
                args: "x"
            }
        );
    }

    #[test]
    fn check_line_rules() {
        assert_eq!(check_line(b"MAIL\0", true), Err(LineError::Nul));
        assert_eq!(check_line(&[0x16, 0x03, 0x01], true), Err(LineError::TlsHello));
        assert_eq!(check_line("EHLO é".as_bytes(), false), Err(LineError::EightBit));
        assert!(check_line("EHLO é".as_bytes(), true).is_ok());
        assert_eq!(check_line(b"EHLO \xff", true), Err(LineError::EightBit));
        assert_eq!(check_line(b"NOOP\rRSET", true), Err(LineError::BareCr));
    }

    #[test]
    fn mail_params() {
        let (m, p) = parse_mail("FROM:<a@b.c> SIZE=100 BODY=8bitmime RET=HDRS ENVID=abc+2B1", CX).unwrap();
        assert_eq!(m.unwrap().to_string(), "a@b.c");
        assert_eq!(p.size, Some(100));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("abc+2B1"));
        assert_eq!(parse_mail("FROM:", CX).unwrap().0, None);
        assert_eq!(parse_mail("FROM: <a@b.c>", CX).unwrap().0.unwrap().local, "a");
    }

    #[test]
    fn mail_param_errors() {
        let code = |s: &str| parse_mail(s, CX).unwrap_err().code;
        assert_eq!(code("FROM:<a@b.c> SIZE=1001"), 552);
        assert_eq!(code("FROM:<a@b.c> SIZE=99999999999999999999999"), 501);
        assert_eq!(code("FROM:<a@b.c> FOO=bar"), 555);
        assert_eq!(code("FROM:<a@b.c> SIZE=1 SIZE=2"), 501);
        assert_eq!(code("FROM:<a@b.c> BODY=9BIT"), 501);
        assert_eq!(code("FROM:<a@b.c> ENVID=a=b"), 501);
        assert_eq!(code("FROM:<a@b.c> RET=ALL"), 501);
        assert_eq!(code("FROM:<a@b.c>SIZE=1"), 501);
        assert_eq!(code("TO:<a@b.c>"), 501);
        assert_eq!(code("FROM:<jö@b.c>"), 553);
        let helo = ParseContext { esmtp: false, ..CX };
        assert_eq!(parse_mail("FROM:<a@b.c> SIZE=1", helo).unwrap_err().code, 555);
        assert!(parse_mail("FROM:<jö@b.c> SMTPUTF8", CX).is_ok());
    }

    #[test]
    fn rcpt_params() {
        let (m, p) = parse_rcpt("TO:<x@y.z> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y.z", CX).unwrap();
        assert_eq!(m.to_string(), "x@y.z");
        assert_eq!(p.notify.unwrap().keywords(), vec!["SUCCESS", "FAILURE"]);
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;x+40y.z"));
        assert!(parse_rcpt("TO:<x@y.z> NOTIFY=NEVER,SUCCESS", CX).is_err());
        assert!(parse_rcpt("TO:<x@y.z> NOTIFY=SOMETIMES", CX).is_err());
        assert!(parse_rcpt("TO:<x@y.z> ORCPT=rfc822", CX).is_err());
        assert!(parse_rcpt("TO:<>", CX).is_err());
    }

    #[test]
    fn xtext_and_bdat() {
        assert!(is_xtext("abc+2Bdef"));
        assert!(!is_xtext("abc+2"));
        assert!(!is_xtext("abc+zz"));
        assert!(!is_xtext("a b"));
        assert_eq!(parse_bdat("10 LAST"), Some((10, true)));
        assert_eq!(parse_bdat("0"), Some((0, false)));
        assert_eq!(parse_bdat("x"), None);
        assert_eq!(parse_bdat("10 FIRST"), None);
        assert_eq!(parse_bdat(""), None);
    }
}
