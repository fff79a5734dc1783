//! `relay`: who may relay. This part of Haraka's plugin is the ACL: clients whose address is
//! in `config/relay_acl_allow` (CIDRs, one per line) get `connection.relaying = true` at
//! connect_init, so their mail to any domain goes the outbound way (`queue_outbound`).
//!
//! Config `relay.ini`: `[main] acl` (default true), `all` (default false: relay for everyone,
//! Haraka's `relay_all`, for tests only). Destination-domain rules come with the security
//! issue.

use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Plugin};

pub struct Relay {
    acl: Vec<IpNet>,
    all: bool,
}

impl Relay {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("relay.ini")?;
        let mut acl = Vec::new();
        if ini.bool("main", "acl", true)? {
            for line in cfg.list("relay_acl_allow")? {
                acl.push(parse_cidr(&line).ok_or_else(|| {
                    ConfigError::new("relay_acl_allow", None, format!("'{line}' is not an address or CIDR"))
                })?);
            }
        }
        Ok(Arc::new(Relay {
            acl,
            all: ini.bool("main", "all", false)?,
        }))
    }
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

impl Plugin for Relay {
    fn name(&self) -> &str {
        "relay"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::ConnectInit]
    }
    fn call<'a>(&'a self, _: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let ip = cx.conn.remote.ip;
        if self.all || self.acl.iter().any(|n| n.contains(&ip)) {
            cx.conn.relaying = true;
        }
        HookResult::CONT.into()
    }
}
