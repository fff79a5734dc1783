//! The connection and transaction state that hooks see (Haraka's `connection` and
//! `connection.transaction`), with their notes.

use crate::protocol::address::Mailbox;
use crate::protocol::command::{MailParams, RcptParams};
use std::net::{IpAddr, SocketAddr};

/// Free-form key/value state shared between plugins (Haraka's notes).
pub type Notes = serde_json::Map<String, serde_json::Value>;

/// HELO or EHLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloVerb {
    Helo,
    Ehlo,
}

/// What the client said in HELO/EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub verb: HelloVerb,
    pub host: String,
}

/// The remote end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub ip: IpAddr,
    pub port: u16,
    /// Reverse DNS name, when a `lookup_rdns` plugin found one.
    pub host: Option<String>,
    pub is_private: bool,
    pub is_local: bool,
}

impl Remote {
    /// An IPv4 client on a dual-stack listener (`::ffff:a.b.c.d`) is stored as its IPv4
    /// address, so ACLs, limits and `is_private` see the same address on every path.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_canonical();
        let is_local = ip.is_loopback();
        let is_private = is_local
            || match ip {
                IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
                IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
            };
        Remote {
            ip,
            port: addr.port(),
            host: None,
            is_private,
            is_local,
        }
    }

    /// `host [ip]`, or `[ip]` when there is no name (Haraka's `get_remote`).
    pub fn display(&self) -> String {
        match &self.host {
            Some(h) => format!("{h} [{}]", self.ip),
            None => format!("[{}]", self.ip),
        }
    }
}

/// What the TLS handshake settled, for logs, the Received header and plugins (Haraka's
/// `connection.tls` / `results.tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The IANA cipher suite name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The client presented a certificate that verified against `tls.ini ca`.
    pub verified_client: bool,
}

/// Per-connection state (Haraka's `connection`).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Upper-case UUID; transactions are `<uuid>.<n>`.
    pub uuid: String,
    pub remote: Remote,
    pub local: SocketAddr,
    pub hello: Option<Hello>,
    /// Set by relay control plugins; a relaying client may send to any domain.
    pub relaying: bool,
    /// The client sent data before it was its turn.
    pub early_talker: bool,
    /// The client pipelined commands correctly (RFC 2920).
    pub pipelining: bool,
    pub tls: bool,
    /// Set when `tls` is: protocol, cipher and SNI of the session.
    pub tls_info: Option<TlsInfo>,
    pub notes: Notes,
    /// Extra EHLO keywords pushed by `capabilities` plugins.
    pub capabilities: Vec<String>,
    /// Protocol errors so far (syntax, sequence, unknown command).
    pub errors: u32,
    /// Unrecognized commands so far.
    pub unrecognized_commands: u32,
    /// Transactions started.
    pub tran_count: u32,
    /// Messages accepted.
    pub msgs_accepted: u32,
    /// The user that passed SMTP AUTH (also in `notes.auth_user`, as Haraka keeps it).
    pub auth_user: Option<String>,
    /// Failed SMTP AUTH attempts so far (the brute-force counter).
    pub auth_failures: u32,
}

impl Connection {
    pub fn new(remote: SocketAddr, local: SocketAddr) -> Self {
        Connection {
            uuid: uuid::Uuid::new_v4().to_string().to_uppercase(),
            remote: Remote::new(remote),
            local: SocketAddr::new(local.ip().to_canonical(), local.port()),
            hello: None,
            relaying: false,
            early_talker: false,
            pipelining: false,
            tls: false,
            tls_info: None,
            notes: Notes::new(),
            capabilities: Vec::new(),
            errors: 0,
            unrecognized_commands: 0,
            tran_count: 0,
            msgs_accepted: 0,
            auth_user: None,
            auth_failures: 0,
        }
    }

    /// True after EHLO (ESMTP parameters allowed, 8-bit commands allowed).
    pub fn esmtp(&self) -> bool {
        matches!(&self.hello, Some(h) if h.verb == HelloVerb::Ehlo)
    }
}

/// One accepted recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub mailbox: Mailbox,
    pub params: RcptParams,
}

/// Per-transaction state, from MAIL FROM to the end of the message or a reset.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// `<connection uuid>.<n>`.
    pub uuid: String,
    /// `None` is the null sender `<>`.
    pub mail_from: Option<Mailbox>,
    pub mail_params: MailParams,
    pub rcpt_to: Vec<Recipient>,
    pub notes: Notes,
    /// Raw octets of message data received.
    pub data_bytes: u64,
    /// BDAT chunks were used for this message.
    pub chunking: bool,
    /// When MAIL was accepted (ms since the epoch).
    pub start_ms: u64,
    /// Relaying for this transaction only (Haraka: `connection.relaying` set while a
    /// transaction is open; the `relay` plugin's `accept` destination domains): the message goes
    /// through `queue_outbound`. Unlike `Connection::relaying` it never makes the core accept a
    /// recipient that no plugin accepted.
    pub relaying: bool,
}

impl Transaction {
    pub fn new(uuid: String, mail_from: Option<Mailbox>, mail_params: MailParams) -> Self {
        Transaction {
            uuid,
            mail_from,
            mail_params,
            rcpt_to: Vec::new(),
            notes: Notes::new(),
            data_bytes: 0,
            chunking: false,
            start_ms: now_ms(),
            relaying: false,
        }
    }

    /// The sender as written in replies: `<a@b>` or `<>`.
    pub fn sender(&self) -> String {
        match &self.mail_from {
            Some(m) => format!("<{m}>"),
            None => "<>".to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_clients_are_stored_as_ipv4() {
        let c = Connection::new(
            "[::ffff:10.1.2.3]:4000".parse().unwrap(),
            "[::ffff:192.0.2.1]:25".parse().unwrap(),
        );
        assert_eq!(c.remote.ip, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(c.remote.is_private && !c.remote.is_local);
        assert_eq!(c.local, "192.0.2.1:25".parse::<SocketAddr>().unwrap());
        let l = Remote::new("[::ffff:127.0.0.1]:1".parse().unwrap());
        assert!(l.is_local && l.is_private);
        let v6 = Remote::new("[2001:db8::1]:1".parse().unwrap());
        assert!(!v6.is_private);
    }
}
