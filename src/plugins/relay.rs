//! `relay`: who may relay, and for which destination domains.
//!
//! - **ACL:** clients whose address is in `config/relay_acl_allow` (CIDRs, one per line) get
//!   `connection.relaying = true` at connect_init, so their mail to any domain goes the outbound
//!   way (`queue_outbound`).
//! - **Destination domains** (`[main] dest_domains=true`): `config/relay_dest_domains.ini`
//!   `[domains]` maps a domain to `{"action": "accept" | "continue" | "deny"}`, applied at
//!   `rcpt` for clients that do not relay: `accept` takes the recipient and sends the message
//!   the outbound way (a backup MX or relay domain), `deny` refuses it, `continue` (and an
//!   unlisted domain) leaves it to the other plugins.
//!
//! Config `relay.ini`: `[main] acl` (default true), `dest_domains` (default false), `all`
//! (default false: relay for everyone, Haraka's `relay_all`, for tests only).

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};

/// What to do with a recipient in a listed destination domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestAction {
    /// Accept it and relay the message outbound, without further checks.
    Accept,
    /// No decision here: the next plugins decide.
    Continue,
    /// Refuse it.
    Deny,
}

pub struct Relay {
    acl: Vec<IpNet>,
    all: bool,
    /// Lower-cased domain → action; empty when `dest_domains` is off.
    dest: HashMap<String, DestAction>,
}

impl Relay {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("relay.ini")?;
        let mut acl = Vec::new();
        if ini.bool("main", "acl", true)? {
            for line in cfg.list("relay_acl_allow")? {
                acl.push(crate::config::parse_net(&line).ok_or_else(|| {
                    ConfigError::new("relay_acl_allow", None, format!("'{line}' is not an address or CIDR"))
                })?);
            }
        }
        let dest = if ini.bool("main", "dest_domains", false)? {
            load_dest_domains(&cfg.ini("relay_dest_domains.ini")?)?
        } else {
            HashMap::new()
        };
        Ok(Arc::new(Relay {
            acl,
            all: ini.bool("main", "all", false)?,
            dest,
        }))
    }

    fn connect_init(&self, cx: &mut HookContext<'_>) -> HookResult {
        let ip = cx.conn.remote.ip;
        if self.all || self.acl.iter().any(|n| n.contains(&ip)) {
            cx.conn.relaying = true;
        }
        HookResult::CONT
    }

    fn rcpt(&self, hook: &Hook, cx: &mut HookContext<'_>) -> HookResult {
        let Hook::Rcpt(r) = hook else {
            return HookResult::CONT;
        };
        // A relaying client may send anywhere already; the table is for everyone else.
        if cx.conn.relaying {
            return HookResult::CONT;
        }
        match self.dest.get(&r.mailbox.host()) {
            Some(DestAction::Accept) => {
                // Relaying for this transaction only: other recipients still need a plugin's OK.
                if let Some(txn) = cx.txn.as_deref_mut() {
                    txn.relaying = true;
                }
                HookResult::new(Outcome::Ok)
            }
            Some(DestAction::Deny) => HookResult::with_msg(
                Outcome::Deny,
                format!("Mail for {} is not accepted here", r.mailbox.host()),
            ),
            Some(DestAction::Continue) | None => HookResult::CONT,
        }
    }
}

/// `relay_dest_domains.ini [domains]`: `domain = {"action": "accept"}` (JSON, as Haraka).
pub fn load_dest_domains(f: &crate::config::IniFile) -> Result<HashMap<String, DestAction>, ConfigError> {
    let mut out = HashMap::new();
    for domain in f.keys("domains") {
        let raw = f.get("domains", &domain).unwrap_or("");
        let action = parse_dest_action(raw).map_err(|p| f.invalid("domains", &domain, p))?;
        out.insert(domain.to_ascii_lowercase(), action);
    }
    Ok(out)
}

/// The `action` of one `[domains]` value. Other fields (Haraka's `nexthop`) are ignored.
pub fn parse_dest_action(raw: &str) -> Result<DestAction, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("'{raw}' is not JSON like {{\"action\": \"accept\"}}: {e}"))?;
    match v.get("action").and_then(|a| a.as_str()) {
        Some("accept") => Ok(DestAction::Accept),
        Some("continue") => Ok(DestAction::Continue),
        Some("deny") => Ok(DestAction::Deny),
        Some(other) => Err(format!("action '{other}' is not accept, continue or deny")),
        None => Err(format!("'{raw}' has no \"action\"")),
    }
}

impl Plugin for Relay {
    fn name(&self) -> &str {
        "relay"
    }
    fn hooks(&self) -> &[HookName] {
        if self.dest.is_empty() {
            &[HookName::ConnectInit]
        } else {
            &[HookName::ConnectInit, HookName::Rcpt]
        }
    }
    fn call<'a>(&'a self, hook: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        match hook.name() {
            HookName::ConnectInit => self.connect_init(cx).into(),
            HookName::Rcpt => self.rcpt(hook, cx).into(),
            _ => HookResult::CONT.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IniFile;

    #[test]
    fn dest_domain_file() {
        let f = IniFile::parse(
            "relay_dest_domains.ini",
            "[domains]\nBackup.Example.net = { \"action\": \"accept\" }\nbad.example = {\"action\":\"deny\"}\nother.example = { \"action\": \"continue\", \"nexthop\": \"127.0.0.1:2525\" }\n",
        )
        .unwrap();
        let m = load_dest_domains(&f).unwrap();
        assert_eq!(m.get("backup.example.net"), Some(&DestAction::Accept));
        assert_eq!(m.get("bad.example"), Some(&DestAction::Deny));
        assert_eq!(m.get("other.example"), Some(&DestAction::Continue));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn bad_actions_name_the_domain() {
        for bad in ["accept", "{\"action\":\"relay\"}", "{}", "{\"action\":1}"] {
            let f = IniFile::parse("relay_dest_domains.ini", &format!("[domains]\nx.example = {bad}\n")).unwrap();
            let e = load_dest_domains(&f).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("[domains] x.example"), "{bad}: {e}");
        }
    }
}
