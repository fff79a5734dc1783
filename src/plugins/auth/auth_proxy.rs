//! `auth/auth_proxy`: check a user's password by logging in to the SMTP server of the user's
//! domain with it.
//!
//! ```ini
//! [main]
//! timeout = 10          ; seconds for one upstream host (connect, EHLO, STARTTLS, AUTH)
//! tls = required        ; or opportunistic: send the password without STARTTLS too
//! tls_verify = true     ; check the upstream's certificate (chain and host name)
//! ca = upstream-ca.pem  ; trust these CAs for it (default: the system's CA store)
//! [domains]
//! example.com = mail.example.com:587,[2001:db8::1]:25
//! ```
//!
//! For `user@example.com` posta connects to each listed host in turn, says EHLO, uses
//! STARTTLS when offered, then AUTH PLAIN (or LOGIN) with the client's credentials:
//! `235` is OK, a `5xx` to AUTH is DENY, anything else (no connection, `4xx`, no usable
//! mechanism) moves on to the next host, and when none answers, DENYSOFT. Users outside
//! `[domains]`, and CRAM-MD5 (whose response cannot be replayed), are left to other
//! plugins (CONT).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};
use crate::protocol::client::{ClientAction, ClientConfig, ClientError, ClientSession, CloseReason};
use crate::protocol::sasl::{AuthAttempt, Mechanism};

const FILE: &str = "auth_proxy.ini";

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

pub struct AuthProxy {
    domains: Vec<(String, Vec<Upstream>)>,
    timeout: Duration,
    helo: String,
    tls: Arc<rustls::ClientConfig>,
    /// `[main] tls = required` (default): never send a password to a host that does not
    /// offer STARTTLS (it counts as unreachable); `opportunistic` is Haraka's behaviour.
    require_tls: bool,
}

/// What one upstream said about the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Refused,
    /// Could not tell: try the next host.
    Unknown,
}

/// `tls_verify` (default true): verify the upstream's certificate against `ca` or the system's
/// CA store; false accepts any certificate (Haraka's behaviour).
fn client_tls(cfg: &Config, ini: &crate::config::IniFile) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    if !ini.bool("main", "tls_verify", true)? {
        return Ok(crate::actors::tls::opportunistic_client());
    }
    let roots = match ini.get("main", "ca").filter(|c| !c.trim().is_empty()) {
        Some(ca) => crate::config::tls::load_roots(FILE, &cfg.dir.join(ca.trim()))?,
        None => system_roots().map_err(|p| ini.invalid("main", "tls_verify", p))?,
    };
    Ok(crate::actors::tls::verifying_client(roots))
}

/// The system's CA store (`/etc/ssl/certs` and the like; `SSL_CERT_FILE`/`SSL_CERT_DIR`).
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no CA certificate in the system store: set [main] ca, or tls_verify=false".into());
    }
    Ok(roots)
}

impl AuthProxy {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini(FILE)?;
        let mut domains = Vec::new();
        for d in ini.keys("domains") {
            let v = ini.get("domains", &d).unwrap_or("");
            let hosts = parse_hosts(v).map_err(|p| ini.invalid("domains", &d, p))?;
            domains.push((d, hosts));
        }
        let secs = ini.u64("main", "timeout", 10)?;
        if !(1..=3_600).contains(&secs) {
            return Err(ini.invalid("main", "timeout", "must be 1 to 3600 seconds"));
        }
        let require_tls = ini.choice("main", "tls", &["required", "opportunistic"], "required")? == "required";
        Ok(Arc::new(AuthProxy {
            domains,
            timeout: Duration::from_secs(secs),
            helo: cfg.me.clone(),
            tls: client_tls(cfg, &ini)?,
            require_tls,
        }))
    }

    fn upstreams(&self, user: &str) -> Option<&[Upstream]> {
        let (_, domain) = user.rsplit_once('@')?;
        let domain = domain.to_ascii_lowercase();
        self.domains
            .iter()
            .find(|(d, _)| *d == domain)
            .map(|(_, h)| h.as_slice())
    }

    async fn check(&self, hosts: &[Upstream], a: &AuthAttempt) -> HookResult {
        let pass = a.password().unwrap_or_default();
        for up in hosts {
            let attempt = self.try_host(up, &a.user, pass);
            let verdict = tokio::time::timeout(self.timeout, attempt)
                .await
                .unwrap_or(Verdict::Unknown);
            tracing::info!(host = %up.host, port = up.port, user = %a.user, ?verdict, "auth_proxy");
            match verdict {
                Verdict::Accepted => return HookResult::new(Outcome::Ok),
                Verdict::Refused => return HookResult::new(Outcome::Deny),
                Verdict::Unknown => continue,
            }
        }
        HookResult::with_msg(Outcome::DenySoft, "Authentication server unavailable, try again later")
    }

    async fn try_host(&self, up: &Upstream, user: &str, pass: &str) -> Verdict {
        let tcp = match TcpStream::connect((up.host.as_str(), up.port)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(host = %up.host, port = up.port, error = %e, "auth_proxy: connect failed");
                return Verdict::Unknown;
            }
        };
        let peer = tcp.peer_addr().ok();
        let mut cfg = ClientConfig::new(self.helo.clone());
        cfg.auth = Some((user.to_string(), pass.to_string()));
        cfg.require_tls = self.require_tls;
        let mut conn = ProxyConn {
            stream: Stream::Plain(tcp),
            session: ClientSession::new(cfg),
            host: up.host.clone(),
            peer,
        };
        conn.run(&self.tls).await
    }
}

/// `host[:port]` entries separated by commas; IPv6 in brackets. Port 25 by default.
pub fn parse_hosts(v: &str) -> Result<Vec<Upstream>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(parse_host(item)?);
    }
    if out.is_empty() {
        return Err("no host given (expected host[:port][,host2[:port]])".into());
    }
    Ok(out)
}

fn parse_host(s: &str) -> Result<Upstream, String> {
    let bad = || format!("'{s}' is not host[:port]");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        (h, tail.strip_prefix(':'))
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad()),
            None => (s, None),
        }
    };
    let port = match port {
        None => 25,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok(Upstream {
        host: host.to_string(),
        port,
    })
}

impl Plugin for AuthProxy {
    fn name(&self) -> &str {
        "auth/auth_proxy"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Auth]
    }
    fn auth_mechanisms(&self) -> &[Mechanism] {
        // Haraka's auth_proxy: the password must be in clear to replay it.
        &[Mechanism::Plain, Mechanism::Login]
    }
    fn call<'a>(&'a self, hook: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let Hook::Auth(a) = hook else {
            return HookResult::CONT.into();
        };
        match (a.password(), self.upstreams(&a.user)) {
            (Some(_), Some(hosts)) => HookReturn::Later(Box::pin(self.check(hosts, a))),
            _ => HookResult::CONT.into(),
        }
    }
    fn timeout(&self) -> Option<Duration> {
        // Every host may use its whole timeout.
        let hosts = self.domains.iter().map(|(_, h)| h.len()).max().unwrap_or(1).max(1);
        let hosts = u32::try_from(hosts).unwrap_or(u32::MAX);
        Some(
            self.timeout
                .saturating_mul(hosts)
                .saturating_add(Duration::from_secs(1)),
        )
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

/// One conversation with an upstream server, driving the sans-IO client session.
struct ProxyConn {
    stream: Stream,
    session: ClientSession,
    host: String,
    peer: Option<SocketAddr>,
}

impl ProxyConn {
    async fn run(&mut self, tls: &Arc<rustls::ClientConfig>) -> Verdict {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.session.next_action() {
                ClientAction::Send(b) => {
                    if self.write(&b).await.is_err() {
                        self.session.peer_closed();
                    }
                }
                ClientAction::NeedInput => match self.read(&mut buf).await {
                    Ok(0) | Err(_) => self.session.peer_closed(),
                    Ok(n) => self.session.receive(&buf[..n]),
                },
                ClientAction::StartTls => self.start_tls(tls).await,
                ClientAction::Ready => return self.finish().await,
                ClientAction::Closed(CloseReason::Failed(ClientError::AuthFailed(r))) if r.class() == 5 => {
                    return Verdict::Refused
                }
                ClientAction::Closed(_) | ClientAction::SendBody | ClientAction::MessageDone(_) => {
                    return Verdict::Unknown
                }
            }
        }
    }

    /// Connected and idle: authenticated, or the server offered no PLAIN/LOGIN.
    async fn finish(&mut self) -> Verdict {
        let verdict = if self.session.is_authenticated() {
            Verdict::Accepted
        } else {
            Verdict::Unknown
        };
        self.session.quit();
        if let ClientAction::Send(b) = self.session.next_action() {
            let _ = self.write(&b).await;
        }
        verdict
    }

    async fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s) => s.write_all(b).await,
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.read(b).await,
            Stream::Tls(s) => s.read(b).await,
            Stream::Gone => Ok(0),
        }
    }

    async fn start_tls(&mut self, tls: &Arc<rustls::ClientConfig>) {
        let (Stream::Plain(tcp), Some(peer)) = (std::mem::replace(&mut self.stream, Stream::Gone), self.peer) else {
            return self.session.tls_done(false);
        };
        let name = crate::actors::tls::server_name(&self.host, peer.ip());
        match tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await {
            Ok(s) => {
                self.stream = Stream::Tls(Box::new(s));
                self.session.tls_done(true);
            }
            Err(e) => {
                tracing::warn!(host = %self.host, error = %e, "auth_proxy: TLS with the upstream failed");
                self.session.tls_done(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let h = parse_hosts("mx.example.com, 127.0.0.1:2525,[::1]:587,[::1]").unwrap();
        let got: Vec<(&str, u16)> = h.iter().map(|u| (u.host.as_str(), u.port)).collect();
        assert_eq!(
            got,
            vec![("mx.example.com", 25), ("127.0.0.1", 2525), ("::1", 587), ("::1", 25)]
        );
        for bad in ["", "a:b", "a:0", "::1", "[::1", "a b:25"] {
            assert!(parse_hosts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "[domains]\nexample.com = mx:smtp\n").unwrap();
        let cfg = Config::load(d.path()).unwrap();
        let e = AuthProxy::build(&cfg).err().unwrap();
        assert_eq!(
            (e.file.as_str(), e.key.as_deref()),
            (FILE, Some("[domains] example.com"))
        );
    }
}
