//! Postfix's XCLIENT command (`XCLIENT_README`): an SMTP proxy in front of posta tells it who
//! the real client is. This module parses the attribute list; the session decides whether
//! the peer may use it and applies it.
//!
//! `XCLIENT attr=value ...` with the attributes `ADDR`, `NAME`, `PORT`, `PROTO`, `HELO`,
//! `LOGIN`, `DESTADDR` and `DESTPORT` (names case-insensitive). Values are xtext (RFC 3461 4);
//! `[UNAVAILABLE]` and `[TEMPUNAVAIL]` mean "not known", as if the attribute were absent.
//! An IPv6 address carries the `IPV6:` prefix.

use std::net::IpAddr;

use super::reply::Reply;
use crate::hooks::state::HelloVerb;

/// The keyword advertised in the EHLO reply, with the attributes posta understands.
pub const CAPABILITY: &str = "XCLIENT ADDR NAME PORT PROTO HELO LOGIN DESTADDR DESTPORT";

/// A parsed XCLIENT command. `None` fields were absent or `[UNAVAILABLE]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xclient {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    /// The client's reverse DNS name (the proxy looked it up).
    pub name: Option<String>,
    pub proto: Option<HelloVerb>,
    pub helo: Option<String>,
    /// The user the proxy authenticated.
    pub login: Option<String>,
    pub destaddr: Option<IpAddr>,
    pub destport: Option<u16>,
}

/// Parse the arguments of XCLIENT. Every failure is a `501 5.5.4` reply.
pub fn parse(args: &str) -> Result<Xclient, Reply> {
    let mut x = Xclient::default();
    if args.trim().is_empty() {
        return Err(bad("XCLIENT needs at least one attribute"));
    }
    for item in args.split_ascii_whitespace() {
        let Some((name, raw)) = item.split_once('=') else {
            return Err(bad(format!("Bad XCLIENT attribute: {item}")));
        };
        let value = decode_xtext(raw).ok_or_else(|| bad(format!("Bad xtext in {name}")))?;
        if is_unavailable(&value) {
            continue;
        }
        set(&mut x, name, value)?;
    }
    // Haraka and posta need the client's address: everything else hangs on it.
    if x.addr.is_none() {
        return Err(bad("No valid IP address found"));
    }
    Ok(x)
}

fn set(x: &mut Xclient, name: &str, value: String) -> Result<(), Reply> {
    let invalid = || bad(format!("Bad XCLIENT {} value", name.to_ascii_uppercase()));
    match name.to_ascii_uppercase().as_str() {
        "ADDR" => x.addr = Some(parse_ip(&value).ok_or_else(|| bad("No valid IP address found"))?),
        "DESTADDR" => x.destaddr = Some(parse_ip(&value).ok_or_else(invalid)?),
        "PORT" => x.port = Some(value.parse().map_err(|_| invalid())?),
        "DESTPORT" => x.destport = Some(value.parse().map_err(|_| invalid())?),
        "PROTO" => {
            x.proto = Some(match value.to_ascii_uppercase().as_str() {
                "SMTP" => HelloVerb::Helo,
                "ESMTP" => HelloVerb::Ehlo,
                _ => return Err(invalid()),
            })
        }
        "NAME" => x.name = Some(host_like(value).ok_or_else(invalid)?),
        "HELO" => x.helo = Some(host_like(value).ok_or_else(invalid)?),
        "LOGIN" => x.login = Some(printable(value).ok_or_else(invalid)?),
        other => return Err(bad(format!("Bad XCLIENT attribute name: {other}"))),
    }
    Ok(())
}

fn bad(text: impl Into<String>) -> Reply {
    Reply::ext(501, (5, 5, 4), text)
}

fn is_unavailable(v: &str) -> bool {
    v.eq_ignore_ascii_case("[UNAVAILABLE]") || v.eq_ignore_ascii_case("[TEMPUNAVAIL]")
}

/// `192.0.2.1` or `IPV6:2001:db8::1` (the prefix is required for IPv6, as in Postfix; a bare
/// IPv6 address is accepted too, since it cannot be mistaken for anything else).
fn parse_ip(v: &str) -> Option<IpAddr> {
    let v6 = v.get(..5).filter(|p| p.eq_ignore_ascii_case("IPV6:")).map(|_| &v[5..]);
    let ip = match v6 {
        Some(rest) => rest.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => v.parse().ok(),
    };
    // `IPV6:::ffff:192.0.2.7` is the IPv4 client of a dual-stack proxy.
    ip.map(|i: IpAddr| i.to_canonical())
}

/// A host name or address literal: printable ASCII without spaces, at most 255 octets, since
/// it ends up in the `Received:` header and the logs.
fn host_like(v: String) -> Option<String> {
    (v.len() <= 255 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic())).then_some(v)
}

/// A login: printable, at most 255 octets (no control bytes into notes and logs).
fn printable(v: String) -> Option<String> {
    (v.len() <= 255 && !v.is_empty() && !v.chars().any(char::is_control)).then_some(v)
}

/// RFC 3461 4: `+HH` stands for the byte 0xHH; everything else is itself.
fn decode_xtext(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_attributes() {
        let x = parse("ADDR=IPV6:2001:db8::7 NAME=mail.example PORT=4000 PROTO=ESMTP HELO=client.example LOGIN=bob+40example.test DESTADDR=192.0.2.1 DESTPORT=587").unwrap();
        assert_eq!(x.addr, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(x.name.as_deref(), Some("mail.example"));
        assert_eq!(x.port, Some(4000));
        assert_eq!(x.proto, Some(HelloVerb::Ehlo));
        assert_eq!(x.helo.as_deref(), Some("client.example"));
        assert_eq!(x.login.as_deref(), Some("bob@example.test"));
        assert_eq!(x.destaddr, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(x.destport, Some(587));
    }

    #[test]
    fn unavailable_values_are_absent() {
        let x = parse("addr=192.0.2.7 name=[UNAVAILABLE] helo=[TEMPUNAVAIL] login=[unavailable]").unwrap();
        assert_eq!(x.addr, Some("192.0.2.7".parse().unwrap()));
        assert_eq!((x.name, x.helo, x.login), (None, None, None));
    }

    #[test]
    fn refusals() {
        for args in [
            "",
            "NAME=x",
            "ADDR=[UNAVAILABLE]",
            "ADDR=999.1.1.1",
            "ADDR=IPV6:192.0.2.1",
            "ADDR=192.0.2.1 PORT=70000",
            "ADDR=192.0.2.1 PROTO=LMTP",
            "ADDR=192.0.2.1 COLOR=blue",
            "ADDR=192.0.2.1 NAME",
            "ADDR=192.0.2.1 HELO=a+0Db",
            "ADDR=192.0.2.1 LOGIN=+zz",
            "ADDR=192.0.2.1 LOGIN=+4",
            "ADDR=192.0.2.1 LOGIN=++41",
        ] {
            let r = parse(args).unwrap_err();
            assert_eq!(r.code, 501, "{args:?}");
        }
    }

    // ----- the session's side, scripted without a runtime -----------------------------

    use crate::hooks::hook::Hook;
    use crate::hooks::outcome::HookResult;
    use crate::protocol::session::{Action, Session, SessionConfig};
    use std::sync::Arc;

    /// Run a session from `peer` with `xclient.hosts` = `hosts` (None: plugin not listed) on
    /// `input`; returns the output and the session. Hooks answer CONT; connect_init marks
    /// 192.0.2.0/24 as relaying, like a relay ACL would.
    fn run(peer: &str, hosts: Option<&str>, input: &[u8]) -> (String, Session, Vec<String>) {
        let mut cfg = SessionConfig::defaults("mx.test");
        cfg.xclient_hosts = hosts.map(|h| vec![h.parse().unwrap()]);
        let conn = crate::hooks::state::Connection::new(peer.parse().unwrap(), "127.0.0.1:25".parse().unwrap());
        let mut s = Session::new(Arc::new(cfg), conn);
        let mut fed = false;
        let mut hooks = Vec::new();
        for _ in 0..1000 {
            match s.next_action() {
                Action::Hook(h) => {
                    hooks.push(format!("{}:{}", h.name().as_str(), s.conn().remote.ip));
                    if h == Hook::ConnectInit && s.conn().remote.ip.to_string().starts_with("192.0.2.") {
                        s.conn_mut().relaying = true;
                    }
                    s.hook_done(HookResult::CONT);
                }
                Action::NeedInput if !fed => {
                    fed = true;
                    s.receive(input);
                }
                Action::NeedInput => s.peer_closed(),
                Action::Close => break,
                _ => {}
            }
        }
        (String::from_utf8_lossy(&s.take_output()).into_owned(), s, hooks)
    }

    #[test]
    fn advertised_and_applied_for_listed_hosts() {
        let input =
            b"EHLO proxy\r\nXCLIENT ADDR=192.0.2.7 PORT=4000 HELO=c.example LOGIN=bob\r\nMAIL FROM:<a@b.test>\r\n";
        let (out, s, hooks) = run("127.0.0.1:5000", Some("127.0.0.1/32"), input);
        assert!(out.contains(CAPABILITY), "{out}");
        let banners = out.lines().filter(|l| l.starts_with("220 ")).count();
        assert_eq!(banners, 2, "{out}");
        assert!(
            out.contains("250 2.1.0 sender <a@b.test> OK"),
            "HELO attribute stands in for EHLO: {out}"
        );
        let c = s.conn();
        assert_eq!(c.remote.ip.to_string(), "192.0.2.7");
        assert_eq!(c.remote.port, 4000);
        assert!(c.relaying);
        assert_eq!(c.notes["auth_user"], "bob");
        assert_eq!(c.notes["xclient"]["proxy_ip"], "127.0.0.1");
        assert!(hooks.contains(&"connect_init:192.0.2.7".to_string()), "{hooks:?}");
        assert!(hooks.contains(&"lookup_rdns:192.0.2.7".to_string()), "{hooks:?}");
    }

    #[test]
    fn new_identity_drops_the_proxys_relaying() {
        // The proxy itself relays (192.0.2.1); the client it names does not.
        let input = b"EHLO proxy\r\nXCLIENT ADDR=IPV6:2001:db8::7 NAME=c.example\r\n";
        let (out, s, hooks) = run("192.0.2.1:5000", Some("192.0.2.0/24"), input);
        assert_eq!(out.lines().filter(|l| l.starts_with("220 ")).count(), 2, "{out}");
        assert!(!s.conn().relaying);
        assert_eq!(s.conn().remote.host.as_deref(), Some("c.example"));
        assert!(
            !hooks.iter().any(|h| h == "lookup_rdns:2001:db8::7"),
            "NAME given: no rDNS"
        );
        assert!(s.conn().hello.is_none());
    }

    #[test]
    fn refusals_in_the_session() {
        let (out, _, _) = run(
            "127.0.0.1:5000",
            Some("10.0.0.0/8"),
            b"EHLO p\r\nXCLIENT ADDR=192.0.2.7\r\n",
        );
        assert!(!out.contains("XCLIENT"), "not advertised: {out}");
        assert!(out.contains("550 5.7.0 Not authorized"), "{out}");

        let (out, _, _) = run("127.0.0.1:5000", None, b"EHLO p\r\nXCLIENT ADDR=192.0.2.7\r\n");
        assert!(
            out.contains("500 5.5.1 Unrecognized command"),
            "plugin not listed: {out}"
        );

        let input = b"EHLO p\r\nMAIL FROM:<a@b.test>\r\nXCLIENT ADDR=192.0.2.7\r\nXCLIENT NAME=x\r\n";
        let (out, _, _) = run("127.0.0.1:5000", Some("127.0.0.1/32"), input);
        assert!(out.contains("503 5.5.1 Mail transaction in progress"), "{out}");
        let (out, _, _) = run("127.0.0.1:5000", Some("127.0.0.1/32"), b"XCLIENT NAME=x\r\n");
        assert!(out.contains("501 5.5.4 No valid IP address found"), "{out}");
    }

    #[test]
    fn proxy_lines_in_the_session_are_refused() {
        let (out, s, _) = run(
            "127.0.0.1:5000",
            None,
            b"PROXY TCP4 192.0.2.7 192.0.2.1 1 25\r\nEHLO x\r\n",
        );
        assert!(out.ends_with("421 4.7.0 PROXY not allowed from 127.0.0.1\r\n"), "{out}");
        assert_eq!(s.conn().remote.ip.to_string(), "127.0.0.1");
        let mut v2 = ppp::v2::PROTOCOL_PREFIX.to_vec();
        v2.extend([0x21, 0x11, 0, 12, 192, 0, 2, 7, 192, 0, 2, 1, 0, 1, 0, 25]);
        let (out, _, _) = run("127.0.0.1:5000", None, &v2);
        assert!(out.ends_with("421 4.7.0 PROXY not allowed from 127.0.0.1\r\n"), "{out}");
    }
}
