//! The PROXY protocol on the socket: a connection from a `connection.ini [haproxy] hosts[]`
//! address must start with a v1 or v2 header, read here before anything else (banner, TLS).
//! Parsing is `protocol::proxy`'s; this file only moves bytes and applies the result.
//!
//! Only the header's own bytes are read (v1 peeks for the LF, v2 reads its announced length),
//! so the SMTP command or TLS ClientHello behind it stays in the socket.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::{count_replies, metrics};
use crate::protocol::proxy::{self, HeaderReader, Next, ProxyError, ProxyHeader, V1_MAX};
use crate::protocol::{Reply, Session};

/// Why no header was taken.
enum Failure {
    /// The peer closed or the socket failed: nobody to answer.
    Closed,
    Refused(ProxyError),
}

/// Take the PROXY header when the peer is a listed proxy, and make the session see the
/// client behind it. False when the connection must be dropped (the peer was answered
/// `421` where possible and a warning names the peer and the reason).
pub async fn accept(stream: &mut TcpStream, session: &mut Session) -> bool {
    let peer = session.conn().remote.ip;
    let cfg = &session.config().proxy;
    if !cfg.trusts(peer) {
        if !cfg.required_ports.contains(&session.conn().local.port()) {
            return true;
        }
        tracing::warn!(peer = %peer, port = session.conn().local.port(), "not a listed proxy on a PROXY-only port, refused");
        refuse(stream, proxy::required_reply(), cfg.timeout).await;
        return false;
    }
    let wait = cfg.timeout;
    match tokio::time::timeout(wait, read_header(stream)).await {
        Ok(Ok(header)) => {
            log_header(peer, &header);
            proxy::apply(session.conn_mut(), &header);
            true
        }
        Ok(Err(Failure::Closed)) => {
            tracing::info!(proxy = %peer, "proxy closed before its PROXY header");
            false
        }
        Ok(Err(Failure::Refused(e))) => {
            tracing::warn!(proxy = %peer, reason = %e, "PROXY header refused");
            refuse(stream, e.reply(), wait).await;
            false
        }
        Err(_) => {
            tracing::warn!(proxy = %peer, timeout_s = wait.as_secs(), "no PROXY header in time");
            refuse(stream, proxy::timeout_reply(), wait).await;
            false
        }
    }
}

fn log_header(peer: std::net::IpAddr, header: &ProxyHeader) {
    match &header.addrs {
        Some(a) => {
            tracing::debug!(proxy = %peer, version = header.version, src = %a.source, dst = %a.destination, "PROXY header")
        }
        None => tracing::debug!(proxy = %peer, version = header.version, "PROXY LOCAL: proxy's own connection"),
    }
}

/// After XCLIENT the session runs as another client under a new uuid, while the log span
/// keeps the connection's first uuid and address: this line ties the two together.
pub fn log_xclient(conn: &crate::hooks::Connection) {
    if let Some(x) = conn.notes.get("xclient") {
        let login = x["login"].as_str().unwrap_or("");
        tracing::info!(new_uuid = %conn.uuid, client = %conn.remote.ip, login, "XCLIENT");
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, Failure> {
    let mut reader = HeaderReader::new();
    let mut line = [0u8; V1_MAX];
    loop {
        match reader.next() {
            Next::Done(r) => return r.map_err(Failure::Refused),
            Next::Exact(n) => {
                let mut bytes = vec![0; n];
                stream.read_exact(&mut bytes).await.map_err(|_| Failure::Closed)?;
                reader.push(&bytes);
            }
            Next::Line(max) => {
                let buf = &mut line[..max.min(V1_MAX)];
                let n = read_line_part(stream, buf).await?;
                reader.push(&buf[..n]);
            }
        }
    }
}

/// Read what has arrived of a text line, up to and including its LF, never past it: peek,
/// then consume only the line's bytes. Each call takes at least one byte, so it cannot spin.
async fn read_line_part(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, Failure> {
    let n = stream.peek(buf).await.map_err(|_| Failure::Closed)?;
    if n == 0 {
        return Err(Failure::Closed);
    }
    let take = memchr::memchr(b'\n', &buf[..n]).map_or(n, |i| i + 1);
    stream.read_exact(&mut buf[..take]).await.map_err(|_| Failure::Closed)?;
    Ok(take)
}

async fn refuse(stream: &mut TcpStream, reply: Reply, wait: std::time::Duration) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    if let Ok(Ok(())) = tokio::time::timeout(wait, stream.write_all(&out)).await {
        count_replies(metrics(), &out);
    }
    let _ = stream.shutdown().await;
}
