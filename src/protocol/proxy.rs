//! The PROXY protocol (HAProxy's `proxy-protocol.txt`), version 1 (text) and version 2
//! (binary), as a sans-IO reader: the driver asks [`HeaderReader::next`] how many bytes to
//! read, hands them over with [`HeaderReader::push`], and gets the parsed header at the end.
//!
//! The reader never asks for a byte past the header (v1: up to the LF, at most 107 bytes; v2:
//! the 16-byte fixed part, then exactly its announced length), so the SMTP or TLS bytes that
//! follow stay in the socket for whoever reads next. Parsing itself is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{v1, v2};

use super::reply::Reply;
use crate::hooks::state::{Connection, Remote};

/// Longest v1 header, CRLF included (proxy-protocol.txt 2.1).
pub const V1_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// `connection.ini [haproxy]`: who may (and then must) send a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `hosts[]`: proxies' addresses or CIDRs. Empty: PROXY is refused from everyone.
    pub hosts: Vec<IpNet>,
    /// `timeout`: how long a listed host has to send its header.
    pub timeout: Duration,
    /// `required_ports`: local ports that only listed proxies may use (a listener meant for
    /// the load balancer); anyone else is refused before the banner.
    pub required_ports: Vec<u16>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            hosts: Vec::new(),
            timeout: Duration::from_secs(30),
            required_ports: Vec::new(),
        }
    }
}

impl ProxyConfig {
    /// True when `ip` is a listed proxy (an IPv4-mapped IPv6 peer counts as its IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.hosts.iter().any(|n| n.contains(&ip))
    }
}

/// What a valid header says about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// The client and the address it connected to; `None` for a v2 `LOCAL` command (a health
    /// check by the proxy itself) or an unspecified family: the proxy's own addresses stand.
    pub addrs: Option<ProxiedAddrs>,
}

/// Source and destination of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddrs {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

impl ProxiedAddrs {
    /// `TCP4` or `TCP6`, as the v1 header spells the family.
    pub fn proto(&self) -> &'static str {
        if self.source.is_ipv4() {
            "TCP4"
        } else {
            "TCP6"
        }
    }
}

/// Why a header was refused. Every variant is answered `421` and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The first bytes are neither `PROXY ` nor the v2 signature.
    #[error("no PROXY header")]
    Missing,
    /// A v1 `PROXY UNKNOWN` line: the proxy does not know the client, so neither do we.
    #[error("PROXY UNKNOWN")]
    Unknown,
    /// A header that does not parse (the text says why).
    #[error("malformed v{version} header: {reason}")]
    Malformed { version: u8, reason: String },
    /// A v2 header for a transport posta does not serve (UDP, UNIX sockets).
    #[error("unsupported v2 transport: {0}")]
    Unsupported(&'static str),
}

impl ProxyError {
    /// The reply sent before closing.
    pub fn reply(&self) -> Reply {
        match self {
            ProxyError::Unsupported(_) => Reply::ext(421, (4, 7, 0), "Unsupported PROXY transport"),
            _ => Reply::ext(421, (4, 5, 2), "Invalid PROXY format"),
        }
    }
}

/// The reply when a listed proxy sent no header in time.
pub fn timeout_reply() -> Reply {
    Reply::ext(421, (4, 4, 2), "PROXY timeout")
}

/// The reply on a `required_ports` listener to a peer that is not a listed proxy.
pub fn required_reply() -> Reply {
    Reply::ext(421, (4, 7, 0), "This port accepts connections through the proxy only")
}

/// The reply when a peer that is not a listed proxy sends a PROXY header (Haraka's text).
pub fn not_allowed_reply(ip: IpAddr) -> Reply {
    Reply::ext(421, (4, 7, 0), format!("PROXY not allowed from {ip}"))
}

/// True when `bytes` start with the v2 signature (a binary header from an unlisted peer).
pub fn is_v2_signature(bytes: &[u8]) -> bool {
    bytes.starts_with(v2::PROTOCOL_PREFIX)
}

/// What the driver must do next to read a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read exactly this many bytes.
    Exact(usize),
    /// Read bytes up to and including the next LF, but at most this many.
    Line(usize),
    /// The header is complete (or refused).
    Done(Result<ProxyHeader, ProxyError>),
}

/// Reads one PROXY header, v1 or v2, told apart by the first byte.
#[derive(Debug, Default)]
pub struct HeaderReader {
    buf: Vec<u8>,
}

impl HeaderReader {
    pub fn new() -> Self {
        HeaderReader::default()
    }

    /// Bytes the driver read, as asked by [`HeaderReader::next`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        match self.buf.first() {
            None => Next::Exact(1),
            Some(b'P') => self.next_v1(),
            Some(b'\r') => self.next_v2(),
            Some(_) => Next::Done(Err(ProxyError::Missing)),
        }
    }

    fn next_v1(&self) -> Next {
        let n = self.buf.len();
        if !b"PROXY ".starts_with(&self.buf[..n.min(6)]) {
            return Next::Done(Err(ProxyError::Missing));
        }
        if self.buf.last() == Some(&b'\n') || n >= V1_MAX {
            return Next::Done(parse_v1(&self.buf));
        }
        Next::Line(V1_MAX - n)
    }

    fn next_v2(&self) -> Next {
        let n = self.buf.len();
        let sig = v2::PROTOCOL_PREFIX;
        if !sig.starts_with(&self.buf[..n.min(sig.len())]) {
            return Next::Done(Err(ProxyError::Missing));
        }
        if n < V2_FIXED {
            return Next::Exact(V2_FIXED - n);
        }
        let total = V2_FIXED + usize::from(u16::from_be_bytes([self.buf[14], self.buf[15]]));
        if n < total {
            return Next::Exact(total - n);
        }
        Next::Done(parse_v2(&self.buf))
    }
}

/// Parse one complete v1 line (CRLF included).
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = |reason: String| ProxyError::Malformed { version: 1, reason };
    if !line.ends_with(b"\r\n") {
        return Err(bad("no CRLF within 107 bytes".into()));
    }
    let header = v1::Header::try_from(line).map_err(|e| bad(e.to_string()))?;
    // ppp stops at the first CR; a header shorter than the line hides bytes in it.
    if header.header.len() != line.len() {
        return Err(bad("bytes after the header on its line".into()));
    }
    let addrs = match header.addresses {
        v1::Addresses::Tcp4(a) => ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        v1::Addresses::Tcp6(a) => ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        v1::Addresses::Unknown => return Err(ProxyError::Unknown),
    };
    Ok(ProxyHeader {
        version: 1,
        addrs: Some(addrs),
    })
}

/// Parse one complete v2 header (fixed part, addresses and TLVs).
pub fn parse_v2(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let header = v2::Header::try_from(bytes).map_err(|e| ProxyError::Malformed {
        version: 2,
        reason: e.to_string(),
    })?;
    if header.command == v2::Command::Local {
        return Ok(ProxyHeader {
            version: 2,
            addrs: None,
        });
    }
    let addrs = match (header.protocol, header.addresses) {
        // proxy-protocol.txt 2.2: an unspecified family means "use the real endpoints".
        (_, v2::Addresses::Unspecified) => None,
        (v2::Protocol::Datagram, _) => return Err(ProxyError::Unsupported("UDP")),
        (_, v2::Addresses::Unix(_)) => return Err(ProxyError::Unsupported("UNIX socket")),
        (_, v2::Addresses::IPv4(a)) => Some(ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        (_, v2::Addresses::IPv6(a)) => Some(ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
    };
    Ok(ProxyHeader { version: 2, addrs })
}

/// Make the connection the proxied client's: remote = source, local = destination, and
/// `notes.proxy` as Haraka fills it (plus `version`). Runs before connect_init, so every
/// hook, the relay ACL, the `Received:` header and the logs see the client, not the proxy.
pub fn apply(conn: &mut Connection, header: &ProxyHeader) {
    let Some(a) = header.addrs else {
        return;
    };
    let proxy_ip = conn.remote.ip;
    // A dual-stack proxy reports IPv4 clients as `::ffff:a.b.c.d`; ACLs list them as IPv4.
    conn.remote = Remote::new(SocketAddr::new(a.source.ip().to_canonical(), a.source.port()));
    conn.local = a.destination;
    let note = serde_json::json!({
        "type": "haproxy",
        "version": header.version,
        "proto": a.proto(),
        "src_ip": a.source.ip().to_string(),
        "src_port": a.source.port(),
        "dst_ip": a.destination.ip().to_string(),
        "dst_port": a.destination.port(),
        "proxy_ip": proxy_ip.to_string(),
    });
    conn.notes.insert("proxy".into(), note);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` the way the driver would (only what is asked for) and return the result
    /// and how many bytes were taken.
    fn read(input: &[u8]) -> (Option<Result<ProxyHeader, ProxyError>>, usize) {
        let mut r = HeaderReader::new();
        let mut pos = 0;
        loop {
            let take = match r.next() {
                Next::Done(res) => return (Some(res), pos),
                Next::Exact(n) => n,
                Next::Line(max) => {
                    let rest = &input[pos..input.len().min(pos + max)];
                    memchr::memchr(b'\n', rest).map(|i| i + 1).unwrap_or(rest.len())
                }
            };
            if pos + take > input.len() {
                return (None, pos);
            }
            r.push(&input[pos..pos + take]);
            pos += take;
        }
    }

    fn v2(cmd: u8, fam: u8, addr: &[u8], tlv: &[u8]) -> Vec<u8> {
        let mut b = v2::PROTOCOL_PREFIX.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend(((addr.len() + tlv.len()) as u16).to_be_bytes());
        b.extend_from_slice(addr);
        b.extend_from_slice(tlv);
        b
    }

    #[test]
    fn v1_tcp4_stops_at_the_line_end() {
        let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n";
        let (res, used) = read(input);
        let h = res.unwrap().unwrap();
        assert_eq!(used, input.len() - 8);
        let a = h.addrs.unwrap();
        assert_eq!(a.source, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(a.destination, "198.51.100.1:25".parse().unwrap());
        assert_eq!(a.proto(), "TCP4");
    }

    #[test]
    fn v1_tcp6_and_refusals() {
        let (res, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 25\r\n");
        assert_eq!(res.unwrap().unwrap().addrs.unwrap().proto(), "TCP6");
        for bad in [
            &b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.7 192.0.2.1 1\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2 3\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2\rX\n",
            b"PROXY TCP5 1 2 3 4\r\n",
            b"PROXY \xff\r\n",
        ] {
            let (res, _) = read(bad);
            assert!(matches!(res, Some(Err(ProxyError::Malformed { .. }))), "{bad:?}");
        }
        assert_eq!(read(b"PROXY UNKNOWN\r\n").0, Some(Err(ProxyError::Unknown)));
        assert_eq!(read(b"EHLO x\r\n").0, Some(Err(ProxyError::Missing)));
        assert_eq!(read(b"PROBE x\r\n").0, Some(Err(ProxyError::Missing)));
    }

    #[test]
    fn v1_too_long_is_refused_at_107_bytes() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.extend(std::iter::repeat_n(b'1', 200));
        let (res, used) = read(&line);
        assert!(matches!(res, Some(Err(ProxyError::Malformed { .. }))));
        assert_eq!(used, V1_MAX);
    }

    #[test]
    fn v2_families_and_commands() {
        let v4 = [192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0, 25];
        let mut input = v2(1, 0x11, &v4, &[0x04, 0, 1, 42]);
        input.extend_from_slice(b"EHLO x\r\n");
        let (res, used) = read(&input);
        let a = res.unwrap().unwrap().addrs.unwrap();
        assert_eq!(a.source, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(used, input.len() - 8, "TLVs read, SMTP left");

        let mut v6 = Vec::new();
        v6.extend("2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend("2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend([0, 1, 0, 25]);
        let a = read(&v2(1, 0x21, &v6, &[])).0.unwrap().unwrap().addrs.unwrap();
        assert_eq!(a.destination, "[2001:db8::1]:25".parse().unwrap());
        assert_eq!(a.proto(), "TCP6");

        let local = read(&v2(0, 0x00, &[], &[])).0.unwrap().unwrap();
        assert_eq!(
            local,
            ProxyHeader {
                version: 2,
                addrs: None
            }
        );
        assert_eq!(
            read(&v2(1, 0x12, &v4, &[])).0,
            Some(Err(ProxyError::Unsupported("UDP")))
        );
    }

    #[test]
    fn v2_malformed_never_panics() {
        // Address block shorter than the family needs, bad version, bad command.
        assert!(matches!(read(&v2(1, 0x11, &[1, 2, 3], &[])).0, Some(Err(_))));
        let mut bad_version = v2(1, 0x11, &[0; 12], &[]);
        bad_version[12] = 0x31;
        assert!(matches!(read(&bad_version).0, Some(Err(_))));
        let mut bad_cmd = v2(1, 0x11, &[0; 12], &[]);
        bad_cmd[12] = 0x2f;
        assert!(matches!(read(&bad_cmd).0, Some(Err(_))));
        // Truncated: the reader still waits for the announced length.
        let full = v2(1, 0x11, &[0; 12], &[]);
        assert_eq!(read(&full[..20]).0, None);
        assert_eq!(read(b"\r\n\r\nXXXXXXXXXXXXXXXX").0, Some(Err(ProxyError::Missing)));
        // Every prefix of every header: no panic.
        for len in 0..full.len() {
            let _ = read(&full[..len]);
            let _ = parse_v2(&full[..len]);
        }
    }

    #[test]
    fn apply_sets_client_and_notes() {
        let mut conn = Connection::new("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:25".parse().unwrap());
        let h = parse_v1(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 2525\r\n").unwrap();
        apply(&mut conn, &h);
        assert_eq!(conn.remote.ip.to_string(), "192.0.2.7");
        assert_eq!(conn.remote.port, 40000);
        assert!(!conn.remote.is_local);
        assert_eq!(conn.local.port(), 2525);
        let note = &conn.notes["proxy"];
        assert_eq!(note["proxy_ip"], "127.0.0.1");
        assert_eq!(note["src_port"], 40000);
        assert_eq!(note["proto"], "TCP4");

        let h = parse_v1(b"PROXY TCP6 ::ffff:192.0.2.8 ::1 40000 25\r\n").unwrap();
        apply(&mut conn, &h);
        assert_eq!(conn.remote.ip.to_string(), "192.0.2.8");
    }

    #[test]
    fn trust_list_matches_mapped_addresses() {
        let cfg = ProxyConfig {
            hosts: vec!["127.0.0.0/8".parse().unwrap()],
            ..ProxyConfig::default()
        };
        assert!(cfg.trusts("127.0.0.9".parse().unwrap()));
        assert!(cfg.trusts("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!cfg.trusts("192.0.2.1".parse().unwrap()));
    }
}
