//! Where a queue item goes: MX targets from DNS or from a `get_mx` plugin, as plain data.
//!
//! A `get_mx` plugin answers `OK` with a message listing targets, comma-separated:
//! `host`, `host:port`, `smtp://[user:pass@]host[:port]`, `lmtp://host[:port]` or
//! `maildir:<directory>`. This is Haraka's HarakaMx URL form, carried in the hook message.

use std::path::PathBuf;

/// How to hand the message over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    Smtp,
    Lmtp,
    /// Local delivery into `<dir>/<domain>/<user>/new/`.
    Maildir(PathBuf),
}

/// One destination host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxTarget {
    pub host: String,
    pub port: u16,
    pub priority: u16,
    pub transport: Transport,
    /// AUTH to a smart host.
    pub auth: Option<(String, String)>,
    /// The target came from DNS (local addresses are refused unless `local_mx_ok`).
    pub from_dns: bool,
}

impl MxTarget {
    pub fn smtp(host: &str, port: u16, priority: u16, from_dns: bool) -> Self {
        MxTarget {
            host: host.trim_end_matches('.').to_ascii_lowercase(),
            port,
            priority,
            transport: Transport::Smtp,
            auth: None,
            from_dns,
        }
    }

    /// `smtp`, `lmtp` or `maildir` (Haraka's `delivered` hook `mode`).
    pub fn mode(&self) -> &'static str {
        match self.transport {
            Transport::Smtp => "smtp",
            Transport::Lmtp => "lmtp",
            Transport::Maildir(_) => "maildir",
        }
    }
}

/// Parse a `get_mx` answer. Errors name the part that is wrong.
pub fn parse_targets(msg: &str) -> Result<Vec<MxTarget>, String> {
    let mut out = Vec::new();
    for (i, part) in msg.split(',').map(str::trim).filter(|p| !p.is_empty()).enumerate() {
        out.push(parse_target(part, i as u16)?);
    }
    if out.is_empty() {
        return Err("get_mx answered OK without a target".into());
    }
    Ok(out)
}

fn parse_target(s: &str, priority: u16) -> Result<MxTarget, String> {
    if let Some(dir) = s.strip_prefix("maildir:") {
        let dir = dir.trim_start_matches("//");
        if dir.is_empty() {
            return Err(format!("'{s}': maildir without a directory"));
        }
        let mut t = MxTarget::smtp("localhost", 0, priority, false);
        t.transport = Transport::Maildir(PathBuf::from(dir));
        return Ok(t);
    }
    let (transport, rest, default_port) = if let Some(r) = s.strip_prefix("smtp://") {
        (Transport::Smtp, r, 25)
    } else if let Some(r) = s.strip_prefix("lmtp://") {
        (Transport::Lmtp, r, 24)
    } else {
        (Transport::Smtp, s, 25)
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((cred, hp)) => {
            let (u, p) = cred
                .split_once(':')
                .ok_or(format!("'{s}': credentials need user:pass"))?;
            (Some((percent_decode(u), percent_decode(p))), hp)
        }
        None => (None, rest),
    };
    let (host, port) = split_host_port(hostport, default_port).map_err(|e| format!("'{s}': {e}"))?;
    let mut t = MxTarget::smtp(&host, port, priority, false);
    t.transport = transport;
    t.auth = auth;
    Ok(t)
}

fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(v6) = s.strip_prefix('[') {
        let (ip, rest) = v6.split_once(']').ok_or("unterminated [")?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port '{p}'"))?,
            None => default_port,
        };
        return Ok((ip.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| format!("bad port '{p}'"))?)),
        _ if s.is_empty() => Err("empty host".into()),
        _ => Ok((s.to_string(), default_port)),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sort MX records by preference; equal preferences keep a random order (RFC 5321 5.1).
pub fn order_mx(mut mx: Vec<(u16, String)>, port: u16) -> Vec<MxTarget> {
    use rand::seq::SliceRandom;
    mx.shuffle(&mut rand::thread_rng());
    mx.sort_by_key(|(p, _)| *p);
    mx.into_iter().map(|(p, h)| MxTarget::smtp(&h, port, p, true)).collect()
}

/// RFC 7505 null MX: a single MX record with preference 0 and exchange ".".
pub fn is_null_mx(mx: &[(u16, String)]) -> bool {
    mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_targets("mx.example:2525, smtp://u%40x:p%3Ass@relay.example:587, lmtp://127.0.0.1").unwrap();
        assert_eq!(
            (t[0].host.as_str(), t[0].port, &t[0].transport),
            ("mx.example", 2525, &Transport::Smtp)
        );
        assert_eq!(t[1].auth, Some(("u@x".into(), "p:ss".into())));
        assert_eq!((t[1].port, t[1].priority), (587, 1));
        assert_eq!((t[2].port, &t[2].transport), (24, &Transport::Lmtp));
        let m = parse_targets("maildir:/var/mail").unwrap();
        assert_eq!(m[0].transport, Transport::Maildir("/var/mail".into()));
        assert_eq!(parse_targets("[::1]:26").unwrap()[0].host, "::1");
        assert!(parse_targets("").is_err());
        assert!(parse_targets("host:notaport").is_err());
        assert!(parse_targets("smtp://user@host").is_err());
    }

    #[test]
    fn mx_order_and_null() {
        let o = order_mx(vec![(20, "b.".into()), (10, "a.".into())], 25);
        assert_eq!(o[0].host, "a");
        assert!(is_null_mx(&[(0, ".".into())]));
        assert!(!is_null_mx(&[(0, ".".into()), (10, "x".into())]));
    }
}
