//! `outbound.ini` (Haraka's keys, plus posta's documented extensions).

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, IniFile};
use crate::queue::schedule::RetrySchedule;

/// Address family preference when an MX host has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InetPrefer {
    /// IPv6 first, as Haraka does.
    Default,
    V4,
    V6,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// `disabled`: queue but do not deliver.
    pub disabled: bool,
    /// `concurrency_max`: deliveries in flight at once.
    pub concurrency_max: usize,
    /// `enable_tls`: opportunistic STARTTLS.
    pub enable_tls: bool,
    /// `maxTempFailures`.
    pub max_temp_failures: u32,
    /// `temp_fail_intervals` / `maxTempFailures` as a schedule.
    pub schedule: RetrySchedule,
    /// `always_split`: one queue file per recipient.
    pub always_split: bool,
    /// `received_header`: text of the outbound Received header, or `disabled`.
    pub received_header: String,
    /// `connect_timeout` in seconds.
    pub connect_timeout: Duration,
    /// `local_mx_ok`: allow delivery to our own or private addresses.
    pub local_mx_ok: bool,
    /// `inet_prefer`.
    pub inet_prefer: InetPrefer,
    /// posta: `nameservers = host:port, …` instead of /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// posta: messages sent over one connection before it is closed.
    pub max_deliveries_per_connection: u32,
    /// posta: concurrent connections to one MX.
    pub max_connections_per_mx: usize,
    /// posta: seconds an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// posta: seconds to wait for each reply from the remote MTA.
    pub reply_timeout: Duration,
    /// posta: `delay_warning` seconds after arrival, a deferred message's sender gets one
    /// "delayed" DSN (Postfix's `delay_warning_time`); zero: never.
    pub delay_warning: Duration,
    /// `tls.ini [outbound] no_tls_hosts[]`: hosts (names or addresses) never offered STARTTLS.
    pub no_tls_hosts: Vec<String>,
    /// posta: the port of MX hosts found in DNS (25; tests and port-redirecting setups
    /// change it).
    pub mx_port: u16,
}

impl OutboundConfig {
    pub fn load(f: &IniFile) -> Result<OutboundConfig, ConfigError> {
        let inet_prefer = match f
            .choice("main", "inet_prefer", &["default", "v4", "v6"], "default")?
            .as_str()
        {
            "v4" => InetPrefer::V4,
            "v6" => InetPrefer::V6,
            _ => InetPrefer::Default,
        };
        let mut nameservers = Vec::new();
        for part in f
            .string("main", "nameservers", "")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            // `ip:port`, `[v6]:port`, or an address alone (port 53).
            let bare = part.trim_start_matches('[').trim_end_matches(']');
            let addr = match (part.parse::<SocketAddr>(), bare.parse::<std::net::IpAddr>()) {
                (Ok(a), _) => a,
                (_, Ok(ip)) => SocketAddr::new(ip, 53),
                _ => return Err(f.invalid("main", "nameservers", format!("'{part}' is not an address"))),
            };
            nameservers.push(addr);
        }
        let concurrency_max = f.u64("main", "concurrency_max", 100)?;
        if concurrency_max == 0 {
            return Err(f.invalid("main", "concurrency_max", "must be at least 1"));
        }
        // Haraka's doubling schedule (2^(i+5) s) is already 36 h per step at 13; past 20 it
        // means waits of years, so larger values are refused.
        let max_temp_failures = f.u64("main", "maxTempFailures", 13)?;
        if max_temp_failures > 20 {
            return Err(f.invalid(
                "main",
                "maxTempFailures",
                "at most 20 (use temp_fail_intervals for longer schedules)",
            ));
        }
        let max_temp_failures = max_temp_failures as u32;
        let intervals = f.get("main", "temp_fail_intervals").filter(|s| !s.is_empty());
        let schedule = RetrySchedule::parse(intervals, max_temp_failures)
            .map_err(|e| f.invalid("main", "temp_fail_intervals", e))?;
        let per_mx = f.u64("main", "max_connections_per_mx", 20)?;
        if per_mx == 0 {
            return Err(f.invalid("main", "max_connections_per_mx", "must be at least 1"));
        }
        Ok(OutboundConfig {
            disabled: f.bool("main", "disabled", false)?,
            concurrency_max: concurrency_max as usize,
            enable_tls: f.bool("main", "enable_tls", true)?,
            max_temp_failures,
            schedule,
            always_split: f.bool("main", "always_split", false)?,
            received_header: f.string("main", "received_header", "posta outbound"),
            connect_timeout: Duration::from_secs(f.u64("main", "connect_timeout", 30)?.max(1)),
            local_mx_ok: f.bool("main", "local_mx_ok", false)?,
            inet_prefer,
            nameservers,
            max_deliveries_per_connection: f.u64("main", "max_deliveries_per_connection", 100)?.max(1) as u32,
            max_connections_per_mx: per_mx as usize,
            pool_idle_timeout: Duration::from_secs(f.u64("main", "pool_idle_timeout", 30)?),
            reply_timeout: Duration::from_secs(f.u64("main", "reply_timeout", 300)?.max(1)),
            delay_warning: match f.u64("main", "delay_warning", 0)? {
                s @ 0..=2_592_000 => Duration::from_secs(s),
                _ => return Err(f.invalid("main", "delay_warning", "at most 2592000 seconds (30 days)")),
            },
            no_tls_hosts: Vec::new(),
            mx_port: match f.u64("main", "mx_port", 25)? {
                p @ 1..=65535 => p as u16,
                _ => return Err(f.invalid("main", "mx_port", "not a TCP port")),
            },
        })
    }
}
