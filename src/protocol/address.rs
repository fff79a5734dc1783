//! Mailbox and path parsing (RFC 5321 4.1.2, RFC 6531 for UTF-8 addresses).
//!
//! The parser is deliberately strict about what ends up in the envelope (no control
//! characters, no spaces outside quotes, bounded lengths, a real domain or address literal)
//! and lenient where Haraka is lenient and it is harmless (`MAIL FROM:` with no path means
//! `<>`, a bare `user@domain` without angle brackets, `<postmaster>` without a domain).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why an address was refused. Each variant maps to one SMTP reply in `command.rs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The path does not follow RFC 5321 syntax; the text says where it went wrong.
    #[error("{0}")]
    Syntax(&'static str),
    /// Non-ASCII characters in an address without the SMTPUTF8 parameter (RFC 6531 3.7.4.1).
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsUtf8,
    /// Local part over 64 octets, domain over 255, or path over 256 (RFC 5321 4.5.3.1).
    #[error("address too long")]
    TooLong,
}

/// A mailbox `local@domain`. The domain is empty only for the RFC 5321 special recipients
/// `<postmaster>` (and Haraka's `<abuse>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mailbox {
    /// Local part as written (quotes kept).
    pub local: String,
    /// Domain as written (case kept), or an address literal with its brackets.
    pub domain: String,
}

impl Mailbox {
    /// The domain lower-cased, used for routing and for splitting a message into queue files.
    pub fn host(&self) -> String {
        self.domain.to_ascii_lowercase()
    }

    /// True when the local part carries sender-specified routing: the `%` hack, a UUCP `!`
    /// path, or an `@` inside a quoted local part (`"user@other.org"@here`). A next hop that
    /// honours any of them would relay the message elsewhere (RFC 2505 2.6, RFC 5321 3.6.1).
    /// Their compatibility forms (fullwidth and small `＠ ％ ！`) count too: Unicode
    /// normalisation (NFKC) downstream turns them into the ASCII ones.
    pub fn has_routing(&self) -> bool {
        const ROUTING: [char; 9] = [
            '%', '!', '@', '\u{FF05}', '\u{FF01}', '\u{FF20}', '\u{FE6A}', '\u{FE57}', '\u{FE6B}',
        ];
        self.local.contains(ROUTING)
    }

    /// True when local part or domain holds non-ASCII characters (needs SMTPUTF8 downstream).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// Options that change what the parser accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathRules {
    /// SMTPUTF8 was given on MAIL: UTF-8 is allowed in local part and domain.
    pub utf8: bool,
    /// `connection.ini strict_rfc1869`: angle brackets are required.
    pub strict: bool,
    /// This is a RCPT path: `<postmaster>` without a domain is allowed.
    pub rcpt: bool,
}

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// Parse a reverse-path or forward-path (the text after `FROM:`/`TO:` with parameters
/// removed). Returns `None` for the null path `<>`.
pub fn parse_path(raw: &str, rules: PathRules) -> Result<Option<Mailbox>, AddressError> {
    let raw = raw.trim_matches(' ');
    if !rules.utf8 && !raw.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(AddressError::Syntax("control character in address"));
    }
    let inner = match (raw.strip_prefix('<'), raw.ends_with('>')) {
        (Some(rest), true) => &rest[..rest.len() - 1],
        (None, false) if !rules.strict => raw,
        (Some(_), false) => return Err(AddressError::Syntax("missing closing angle bracket")),
        _ => return Err(AddressError::Syntax("angle brackets required")),
    };
    if inner.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    if inner.is_empty() {
        if rules.rcpt {
            return Err(AddressError::Syntax("empty recipient"));
        }
        return Ok(None);
    }
    let mailbox = strip_source_route(inner)?;
    parse_mailbox(mailbox, rules).map(Some)
}

/// RFC 5321 4.1.2 `A-d-l ":"`: a source route is accepted and ignored (4.1.1.3 / Appendix C),
/// so `<@relay:user@host>` means `<user@host>`; routing by it would make an open relay.
fn strip_source_route(inner: &str) -> Result<&str, AddressError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let colon = inner
        .find(':')
        .ok_or(AddressError::Syntax("source route without colon"))?;
    for hop in inner[..colon].split(',') {
        let hop = hop.strip_prefix('@').ok_or(AddressError::Syntax("bad source route"))?;
        check_domain(hop, true)?;
    }
    Ok(&inner[colon + 1..])
}

/// Parse `local@domain` (or a bare `postmaster` for RCPT).
pub fn parse_mailbox(s: &str, rules: PathRules) -> Result<Mailbox, AddressError> {
    let (local, domain) = split_local(s)?;
    check_local(local, rules.utf8)?;
    match domain {
        None => {
            let l = local.to_ascii_lowercase();
            if rules.rcpt && (l == "postmaster" || l == "abuse") {
                Ok(Mailbox {
                    local: local.to_string(),
                    domain: String::new(),
                })
            } else {
                Err(AddressError::Syntax("address must contain a domain"))
            }
        }
        Some(d) => {
            check_domain(d, rules.utf8)?;
            Ok(Mailbox {
                local: local.to_string(),
                domain: d.to_string(),
            })
        }
    }
}

/// Split at the `@` that ends the local part, honouring a quoted local part.
fn split_local(s: &str) -> Result<(&str, Option<&str>), AddressError> {
    if s.starts_with('"') {
        let bytes = s.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        if i >= bytes.len() {
            return Err(AddressError::Syntax("unterminated quoted local part"));
        }
        let local = &s[..=i];
        return match s[i + 1..].strip_prefix('@') {
            Some(d) => Ok((local, Some(d))),
            None if i + 1 == s.len() => Ok((local, None)),
            None => Err(AddressError::Syntax("junk after quoted local part")),
        };
    }
    match s.rfind('@') {
        Some(at) => Ok((&s[..at], Some(&s[at + 1..]))),
        None => Ok((s, None)),
    }
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
}

fn check_local(local: &str, utf8: bool) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if local.len() > MAX_LOCAL {
        return Err(AddressError::TooLong);
    }
    if let Some(q) = local.strip_prefix('"') {
        let body = q.strip_suffix('"').unwrap_or(q);
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            let ok = match c {
                '\\' => chars.next().is_some_and(|n| (' '..='~').contains(&n)),
                '"' => false,
                c => (' '..='~').contains(&c) || (utf8 && !c.is_ascii()),
            };
            if !ok {
                return Err(AddressError::Syntax("bad character in quoted local part"));
            }
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() {
            return Err(AddressError::Syntax("empty atom in local part"));
        }
        if !atom.chars().all(|c| is_atext(c, utf8)) {
            return Err(AddressError::Syntax("bad character in local part"));
        }
    }
    Ok(())
}

/// RFC 5321 `Domain` or `address-literal`. A trailing dot is refused: it is not in the grammar
/// and is a classic way to slip past a domain comparison.
pub fn check_domain(d: &str, utf8: bool) -> Result<(), AddressError> {
    if d.is_empty() {
        return Err(AddressError::Syntax("empty domain"));
    }
    if d.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("unterminated address literal"))?;
        return check_literal(lit);
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || (utf8 && !c.is_ascii() && c.is_alphanumeric()));
        if !ok {
            return Err(AddressError::Syntax("bad domain"));
        }
    }
    Ok(())
}

fn check_literal(lit: &str) -> Result<(), AddressError> {
    let ok = match lit.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => lit[5..].parse::<Ipv6Addr>().is_ok(),
        _ => lit.parse::<Ipv4Addr>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(AddressError::Syntax("bad address literal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: PathRules = PathRules {
        utf8: false,
        strict: false,
        rcpt: false,
    };
    const RCPT: PathRules = PathRules {
        utf8: false,
        strict: false,
        rcpt: true,
    };

    fn mb(s: &str, r: PathRules) -> Result<Option<Mailbox>, AddressError> {
        parse_path(s, r)
    }

    #[test]
    fn null_and_plain() {
        assert_eq!(mb("<>", MAIL), Ok(None));
        assert_eq!(mb("", MAIL), Ok(None));
        let m = mb("<a.b@Example.COM>", MAIL).unwrap().unwrap();
        assert_eq!(m.local, "a.b");
        assert_eq!(m.host(), "example.com");
        assert_eq!(
            mb("user@example.com", MAIL).unwrap().unwrap().to_string(),
            "user@example.com"
        );
    }

    #[test]
    fn postmaster_only_for_rcpt() {
        assert!(mb("<postmaster>", RCPT).unwrap().is_some());
        assert!(mb("<Abuse>", RCPT).unwrap().is_some());
        assert!(mb("<postmaster>", MAIL).is_err());
        assert!(mb("<unknown>", RCPT).is_err());
        assert!(mb("<>", RCPT).is_err());
    }

    #[test]
    fn source_route_is_ignored() {
        let m = mb("<@relay.example,@b.example:user@c.example>", RCPT).unwrap().unwrap();
        assert_eq!(m.to_string(), "user@c.example");
        assert!(mb("<@relay.example user@c>", RCPT).is_err());
    }

    #[test]
    fn quoted_and_literals() {
        assert_eq!(mb("<\"a b\"@x.org>", RCPT).unwrap().unwrap().local, "\"a b\"");
        assert!(mb("<user@[127.0.0.1]>", RCPT).is_ok());
        assert!(mb("<user@[IPv6:::1]>", RCPT).is_ok());
        assert!(mb("<user@[300.0.0.1]>", RCPT).is_err());
        assert!(mb("<\"unterminated@x.org>", RCPT).is_err());
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "<a b@x.org>",
            "<a@x.org",
            "<a@@x.org>",
            "<a@x.org.>",
            "<a@-x.org>",
            "<.a@x.org>",
            "<a..b@x.org>",
            "<a@x..org>",
            "<a@>",
            "<@x.org>",
            "<a@x_y.org>",
        ] {
            assert!(mb(bad, RCPT).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn utf8_needs_flag() {
        assert_eq!(mb("<jösé@exämple.org>", RCPT), Err(AddressError::NeedsUtf8));
        let r = PathRules { utf8: true, ..RCPT };
        assert!(mb("<jösé@exämple.org>", r).unwrap().unwrap().is_utf8());
    }

    #[test]
    fn lengths() {
        let long_local = format!("<{}@x.org>", "a".repeat(65));
        assert_eq!(mb(&long_local, RCPT), Err(AddressError::TooLong));
        let strict = PathRules { strict: true, ..RCPT };
        assert!(mb("a@x.org", strict).is_err());
    }
}
