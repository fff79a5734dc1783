//! Loading a Haraka-style config directory into typed settings with Haraka's defaults.
//!
//! Every key is read here, once, and documented in `docs/config.md`. A bad file or value
//! stops start-up with a [`ConfigError`] naming the file, the key and the problem.

pub mod actors;
pub mod ini;
pub mod limits;
pub mod outbound;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use actors::ActorsConfig;
pub use ini::IniFile;
pub use outbound::OutboundConfig;
pub use tls::TlsIni;

use crate::hooks::HookSet;
use crate::protocol::proxy::ProxyConfig;
use crate::protocol::sasl::AuthSettings;
use crate::protocol::session::{BareEol, SessionConfig, StartTlsPolicy};
use ipnet::IpNet;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {problem}", key.as_ref().map(|k| format!(": {k}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub problem: String,
}

impl ConfigError {
    pub fn new(file: &str, key: Option<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            key,
            problem: problem.into(),
        }
    }
}

/// `smtp.ini` settings.
#[derive(Debug, Clone)]
pub struct SmtpIni {
    /// `[main] listen`: where to accept SMTP.
    pub listen: Vec<SocketAddr>,
    /// `[main] nodes`: worker threads (one listener each).
    pub nodes: usize,
    /// `[main] inactivity_timeout`.
    pub inactivity_timeout: Duration,
    /// `[main] force_shutdown_timeout`: seconds sessions get to finish at shutdown.
    pub force_shutdown_timeout: Duration,
    /// `[main] smtps_port`: listeners on this port speak TLS from the first byte (RFC 8314).
    pub smtps_port: u16,
}

/// The whole configuration directory.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// `me`: this server's name.
    pub me: String,
    /// `host_list`: local domains, lower-cased.
    pub host_list: Vec<String>,
    /// `plugins`: plugin names in order.
    pub plugins: Vec<String>,
    /// `plugin_timeout`: seconds (0 = none).
    pub plugin_timeout: Duration,
    /// `queue_dir`: where queue files live.
    pub queue_dir: PathBuf,
    pub smtp: SmtpIni,
    /// Session settings from `connection.ini` (plus `me`).
    pub session: SessionConfig,
    /// `connection.ini [main] spool_after`: body bytes kept in memory before spooling to disk.
    pub spool_after: usize,
    /// `connection.ini [main] no_fsync`: benchmarks only; logs a warning.
    pub no_fsync: bool,
    /// `connection.ini [max] connections*`, `connection_rate`: connection limits.
    pub limits: crate::limits::LimitsConfig,
    /// `connection.ini [deadline]`: slow-client deadlines.
    pub deadlines: crate::protocol::deadline::DeadlineConfig,
    /// `outbound.ini`.
    pub outbound: OutboundConfig,
    /// `outbound.bounce_message`: the human part of DSNs (built-in default when absent).
    pub bounce_template: Option<crate::protocol::dsn::BounceTemplate>,
    /// `actors.ini`: mailbox capacities and actor concurrency.
    pub actors: ActorsConfig,
    /// `tls.ini`, when the `tls` plugin is listed (inbound TLS on).
    pub tls: Option<TlsIni>,
}

impl Config {
    /// Load and validate a config directory.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        if !dir.is_dir() {
            return Err(ConfigError::new(
                &dir.display().to_string(),
                None,
                "config directory does not exist",
            ));
        }
        let me = read_value(dir, "me")?.unwrap_or_else(default_hostname);
        let host_list = read_list(dir, "host_list")?
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let plugins: Vec<String> = read_list(dir, "plugins")?
            .into_iter()
            .map(|p| p.strip_prefix("haraka-plugin-").map(String::from).unwrap_or(p))
            .collect();
        let plugin_timeout =
            match read_value(dir, "plugin_timeout")? {
                None => Duration::from_secs(30),
                Some(v) => Duration::from_secs(v.parse().map_err(|_| {
                    ConfigError::new("plugin_timeout", None, format!("'{v}' is not a number of seconds"))
                })?),
            };
        let queue_dir = match read_value(dir, "queue_dir")? {
            Some(q) => dir.join(q),
            None => dir.join("..").join("queue"),
        };
        let smtp = load_smtp(&IniFile::load(dir, "smtp.ini")?)?;
        let conn_ini = IniFile::load(dir, "connection.ini")?;
        let mut session = load_session(&conn_ini, &me)?;
        session.auth = load_auth(&IniFile::load(dir, "auth.ini")?)?;
        session.xclient_hosts = load_xclient_hosts(dir, &plugins)?;
        let spool_after = conn_ini.i64("main", "spool_after", 262_144)?;
        let spool_after = if spool_after < 0 {
            usize::MAX
        } else {
            spool_after as usize
        };
        let no_fsync = conn_ini.bool("main", "no_fsync", false)?;
        let limits = limits::load_limits(&conn_ini)?;
        let deadlines = limits::load_deadlines(&conn_ini)?;
        let mut outbound = OutboundConfig::load(&IniFile::load(dir, "outbound.ini")?)?;
        outbound.no_tls_hosts = tls::read_ini(dir)?
            .0
            .list("outbound", "no_tls_hosts")
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let tls = match plugins.iter().any(|p: &String| p == "tls") {
            true => Some(TlsIni::load(dir)?),
            false => None,
        };
        let bounce_template = match std::fs::read_to_string(dir.join("outbound.bounce_message")) {
            Ok(t) => Some(
                crate::protocol::dsn::BounceTemplate::parse(&t)
                    .map_err(|e| ConfigError::new("outbound.bounce_message", None, e))?,
            ),
            Err(_) => None,
        };
        Ok(Config {
            dir: dir.to_path_buf(),
            me,
            host_list,
            plugins,
            plugin_timeout,
            queue_dir,
            smtp,
            session,
            spool_after,
            no_fsync,
            limits,
            deadlines,
            outbound,
            bounce_template,
            actors: ActorsConfig::load(&IniFile::load(dir, "actors.ini")?)?,
            tls,
        })
    }

    /// The session settings with the set of hooks that have plugins.
    pub fn session_config(&self, hooks: HookSet) -> SessionConfig {
        let mut s = self.session.clone();
        s.hooks = hooks;
        if let Some(t) = &self.tls {
            s.starttls = StartTlsPolicy {
                enabled: true,
                no_tls_hosts: t.no_tls_hosts.clone(),
                no_starttls_ports: t.no_starttls_ports.clone(),
                require_verified_ports: t.require_authorized.clone(),
            };
        }
        s
    }

    /// The session settings for a plugin chain: its hooks and the AUTH mechanisms its
    /// plugins can check.
    pub fn session_for(&self, chain: &crate::hooks::PluginChain) -> SessionConfig {
        let mut s = self.session_config(chain.hook_set());
        s.auth.mechanisms = chain.auth_mechanisms().to_vec();
        s
    }

    /// An ini file of this directory (for plugins).
    pub fn ini(&self, name: &str) -> Result<IniFile, ConfigError> {
        IniFile::load(&self.dir, name)
    }

    /// A one-line value file of this directory (for plugins).
    pub fn value(&self, name: &str) -> Result<Option<String>, ConfigError> {
        read_value(&self.dir, name)
    }

    /// A list file of this directory (for plugins).
    pub fn list(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        read_list(&self.dir, name)
    }
}

fn load_smtp(f: &IniFile) -> Result<SmtpIni, ConfigError> {
    let listen_raw = f.string("main", "listen", "[::0]:25");
    let mut listen = Vec::new();
    for part in listen_raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        listen.push(parse_listen(part).map_err(|p| f.invalid("main", "listen", p))?);
    }
    if listen.is_empty() {
        return Err(f.invalid("main", "listen", "no address given"));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let nodes = match f.get("main", "nodes") {
        None | Some("") | Some("cpus") => cores,
        Some(_) => match f.u64("main", "nodes", 0)? {
            0 => 1,
            n if n > 256 => return Err(f.invalid("main", "nodes", "at most 256 workers")),
            n => n as usize,
        },
    };
    let inactivity = f.u64("main", "inactivity_timeout", 300)?;
    if !(1..=86_400).contains(&inactivity) {
        return Err(f.invalid("main", "inactivity_timeout", "must be 1 to 86400 seconds"));
    }
    Ok(SmtpIni {
        listen,
        nodes,
        inactivity_timeout: Duration::from_secs(inactivity),
        force_shutdown_timeout: Duration::from_secs(f.u64("main", "force_shutdown_timeout", 30)?),
        smtps_port: u16::try_from(f.u64("main", "smtps_port", 465)?)
            .map_err(|_| f.invalid("main", "smtps_port", "not a port number"))?,
    })
}

/// Haraka's listen forms: `ip:port`, `[v6]:port`, `ip` or `[v6]` (port 25), or `port`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 25));
    }
    if let Ok(mut addrs) = s.to_socket_addrs() {
        if let Some(a) = addrs.next() {
            return Ok(a);
        }
    }
    Err(format!(
        "'{s}' is not an address (expected ip:port, [ipv6]:port, ip or port)"
    ))
}

fn load_session(f: &IniFile, me: &str) -> Result<SessionConfig, ConfigError> {
    let d = SessionConfig::defaults(me);
    let line_length = f.u64("max", "line_length", d.line_length as u64)? as usize;
    if line_length < 64 {
        return Err(f.invalid("max", "line_length", "must be at least 64 (RFC 5321 asks for 512)"));
    }
    let data_line_length = f.u64("max", "data_line_length", d.data_line_length as u64)? as usize;
    if data_line_length != 0 && data_line_length < 80 {
        return Err(f.invalid("max", "data_line_length", "must be 0 (never fold) or at least 80"));
    }
    let bare_eol = match f
        .choice("main", "bare_eol", &["normalize", "reject"], "normalize")?
        .as_str()
    {
        "reject" => BareEol::Reject,
        _ => BareEol::Normalize,
    };
    Ok(SessionConfig {
        me: me.to_string(),
        greeting: f.list("message", "greeting"),
        show_version: f.bool("headers", "show_version", d.show_version)?,
        banner_chars: f.u64("uuid", "banner_chars", d.banner_chars as u64)?.min(36) as usize,
        helo_msg: f.string("message", "helo", &d.helo_msg),
        close_msg: f.string("message", "close", &d.close_msg),
        smtputf8: f.bool("main", "smtputf8", d.smtputf8)?,
        strict_rfc1869: f.bool("main", "strict_rfc1869", d.strict_rfc1869)?,
        line_length,
        data_line_length,
        max_bytes: f.u64("max", "bytes", d.max_bytes)?,
        max_recipients: f.u64("max", "recipients", d.max_recipients as u64)? as usize,
        max_errors: f.u64("max", "errors", d.max_errors as u64)?.min(u32::MAX as u64) as u32,
        max_received: f.u64("headers", "max_received", d.max_received as u64)? as usize,
        add_received: f.bool("headers", "add_received", d.add_received)?,
        bare_eol,
        starttls: StartTlsPolicy::default(),
        hooks: HookSet::all(),
        auth: AuthSettings::default(),
        proxy: load_proxy(f)?,
        xclient_hosts: None,
    })
}

/// `auth.ini`: when SMTP AUTH is offered and how failures are slowed down (docs/auth.md).
fn load_auth(f: &IniFile) -> Result<AuthSettings, ConfigError> {
    let d = AuthSettings::default();
    let ports = f
        .ports("main", "submission_ports")?
        .unwrap_or_else(|| d.submission_ports.clone());
    let ms = |key: &str, def: Duration| -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(f.u64("main", key, def.as_millis() as u64)?))
    };
    Ok(AuthSettings {
        mechanisms: Vec::new(),
        plaintext_private: f.bool("main", "plaintext_private", d.plaintext_private)?,
        submission_ports: ports,
        failure_delay: ms("failure_delay_ms", d.failure_delay)?,
        failure_delay_max: ms("failure_delay_max_ms", d.failure_delay_max)?,
        max_failures: f
            .u64("main", "max_failures", u64::from(d.max_failures))?
            .min(u64::from(u32::MAX)) as u32,
        lockout_failures: f
            .u64("main", "lockout_failures", u64::from(d.lockout_failures))?
            .min(u64::from(u32::MAX)) as u32,
        lockout_window: {
            let secs = f.u64("main", "lockout_window", d.lockout_window.as_secs())?;
            if !(1..=86_400).contains(&secs) {
                return Err(f.invalid("main", "lockout_window", "must be 1 to 86400 seconds"));
            }
            Duration::from_secs(secs)
        },
    })
}

/// `connection.ini [haproxy]`: `hosts[]` (addresses or CIDRs) and `timeout` (seconds).
fn load_proxy(f: &IniFile) -> Result<ProxyConfig, ConfigError> {
    let mut hosts = Vec::new();
    for entry in f.list("haproxy", "hosts") {
        // Haraka accepts comma-separated values inside one list entry too.
        for h in entry.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            hosts.push(
                parse_net(h)
                    .ok_or_else(|| f.invalid("haproxy", "hosts[]", format!("'{h}' is not an address or CIDR")))?,
            );
        }
    }
    let timeout = f.u64("haproxy", "timeout", 30)?;
    if timeout == 0 {
        return Err(f.invalid("haproxy", "timeout", "must be at least 1 second"));
    }
    let required_ports = f.ports("haproxy", "required_ports")?.unwrap_or_default();
    Ok(ProxyConfig {
        hosts,
        timeout: Duration::from_secs(timeout),
        required_ports,
    })
}

/// `xclient.hosts` (list): who may send XCLIENT, read only when the `xclient` plugin is listed.
fn load_xclient_hosts(dir: &Path, plugins: &[String]) -> Result<Option<Vec<IpNet>>, ConfigError> {
    if !plugins.iter().any(|p| p == "xclient") {
        return Ok(None);
    }
    let mut hosts = Vec::new();
    for h in read_list(dir, "xclient.hosts")? {
        hosts.push(
            parse_net(&h)
                .ok_or_else(|| ConfigError::new("xclient.hosts", None, format!("'{h}' is not an address or CIDR")))?,
        );
    }
    Ok(Some(hosts))
}

/// `192.0.2.0/24`, `2001:db8::/64`, or a bare address: exactly that address (/32 or /128;
/// Haraka widens a bare IPv6 proxy address to /64, posta does not).
/// `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128); host bits are cleared.
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// Lines of a list file, without comments and blank lines. Missing file: empty list.
pub fn read_list(dir: &Path, name: &str) -> Result<Vec<String>, ConfigError> {
    let text = match std::fs::read_to_string(dir.join(name)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::new(name, None, format!("cannot read: {e}"))),
    };
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The first line of a value file. Missing or empty file: `None`.
pub fn read_value(dir: &Path, name: &str) -> Result<Option<String>, ConfigError> {
    Ok(read_list(dir, name)?.into_iter().next())
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("127.0.0.1:2525").unwrap().port(), 2525);
        assert_eq!(parse_listen("[::1]:25").unwrap().port(), 25);
        assert_eq!(parse_listen("[::1]").unwrap().port(), 25);
        assert_eq!(parse_listen("127.0.0.1").unwrap().port(), 25);
        assert_eq!(parse_listen("2500").unwrap().port(), 2500);
        assert!(parse_listen("not an address:x").is_err());
    }

    #[test]
    fn defaults_from_empty_dir() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(d.path()).unwrap();
        assert_eq!(c.session.max_bytes, 26_214_400);
        assert_eq!(c.session.line_length, 512);
        assert_eq!(c.smtp.inactivity_timeout, Duration::from_secs(300));
        assert_eq!(c.smtp.listen[0].port(), 25);
        assert!(c.plugins.is_empty());
    }

    #[test]
    fn auth_ini_keys() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(d.path()).unwrap();
        assert_eq!(c.session.auth, AuthSettings::default());
        std::fs::write(
            d.path().join("auth.ini"),
            "[main]\nplaintext_private=false\nsubmission_ports=2587, 2465\nfailure_delay_ms=10\nmax_failures=0\n",
        )
        .unwrap();
        let a = Config::load(d.path()).unwrap().session.auth;
        assert!(!a.plaintext_private);
        assert_eq!(a.submission_ports, vec![2587, 2465]);
        assert_eq!(a.failure_delay, Duration::from_millis(10));
        assert_eq!(a.max_failures, 0);
        std::fs::write(
            d.path().join("auth.ini"),
            "[main]\nlockout_failures=7\nlockout_window=60\n",
        )
        .unwrap();
        let a = Config::load(d.path()).unwrap().session.auth;
        assert_eq!((a.lockout_failures, a.lockout_window), (7, Duration::from_secs(60)));
        std::fs::write(d.path().join("auth.ini"), "[main]\nlockout_window=0\n").unwrap();
        let e = Config::load(d.path()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("[main] lockout_window"));
        std::fs::write(d.path().join("auth.ini"), "[main]\nsubmission_ports=587,smtp\n").unwrap();
        let e = Config::load(d.path()).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_deref()),
            ("auth.ini", Some("[main] submission_ports"))
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("smtp.ini"), "[main]\nlisten=nowhere\n").unwrap();
        let e = Config::load(d.path()).unwrap_err();
        assert_eq!(e.file, "smtp.ini");
        assert_eq!(e.key.as_deref(), Some("[main] listen"));
    }
}
