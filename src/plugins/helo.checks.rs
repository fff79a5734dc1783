//! `helo.checks`: a useful subset of Haraka's HELO/EHLO validity checks.
//!
//! Config `helo.checks.ini`, Haraka's sections: `[check]` turns a check on, `[reject]`
//! decides whether a failure is refused (`550`) or only recorded in
//! `connection.notes["helo.checks"]`. `[skip] private_ip` (default true) skips clients on
//! private/loopback addresses, as Haraka does. Checks:
//!
//! - `valid_hostname`: the name has a dot and only letters, digits, `-` and `.`, or is an
//!   address literal.
//! - `bare_ip`: an IP address without brackets (RFC 5321 wants `[1.2.3.4]`).
//! - `literal_mismatch`: an address literal that is not the client's address.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};

const CHECKS: [&str; 3] = ["valid_hostname", "bare_ip", "literal_mismatch"];

pub struct HeloChecks {
    check: [bool; 3],
    reject: [bool; 3],
    skip_private: bool,
}

impl HeloChecks {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("helo.checks.ini")?;
        let mut check = [true; 3];
        let mut reject = [true; 3];
        for (i, name) in CHECKS.iter().enumerate() {
            check[i] = ini.bool("check", name, true)?;
            reject[i] = ini.bool("reject", name, true)?;
        }
        Ok(Arc::new(HeloChecks {
            check,
            reject,
            skip_private: ini.bool("skip", "private_ip", true)?,
        }))
    }

    /// The first failing check, if any.
    fn failure(&self, host: &str, remote: IpAddr) -> Option<(usize, &'static str)> {
        let literal = host.starts_with('[') && host.ends_with(']');
        let tests: [(bool, &'static str); 3] = [
            (!literal && !valid_hostname(host), "Host name is not valid"),
            (host.parse::<IpAddr>().is_ok(), "Invalid address format in HELO"),
            (
                literal && !literal_matches(host, remote),
                "HELO address literal does not match your IP",
            ),
        ];
        tests
            .iter()
            .enumerate()
            .find(|(i, (failed, _))| self.check[*i] && *failed)
            .map(|(i, (_, msg))| (i, *msg))
    }
}

fn valid_hostname(h: &str) -> bool {
    h.contains('.')
        && !h.ends_with('.')
        && h.split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

fn literal_matches(host: &str, remote: IpAddr) -> bool {
    let inner = &host[1..host.len() - 1];
    let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
    inner.parse::<IpAddr>().is_ok_and(|ip| ip == remote)
}

impl Plugin for HeloChecks {
    fn name(&self) -> &str {
        "helo.checks"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Helo, HookName::Ehlo]
    }
    fn call<'a>(&'a self, hook: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let (Hook::Helo(host) | Hook::Ehlo(host)) = hook else {
            return HookResult::CONT.into();
        };
        if self.skip_private && cx.conn.remote.is_private {
            return HookResult::CONT.into();
        }
        let Some((i, msg)) = self.failure(host, cx.conn.remote.ip) else {
            return HookResult::CONT.into();
        };
        cx.conn
            .notes
            .insert("helo.checks".into(), serde_json::json!({ "fail": CHECKS[i] }));
        if self.reject[i] {
            return HookResult::with_msg(Outcome::Deny, msg).into();
        }
        HookResult::CONT.into()
    }
}
