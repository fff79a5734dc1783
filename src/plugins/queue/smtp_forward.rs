//! `queue/smtp_forward`: send mail to a fixed next hop (Haraka's smtp_forward.ini), as a
//! route through the durable queue: the `queue` hook marks the message, the `get_mx` hook
//! answers with the configured host (Haraka's smtp_forward with `enable_outbound`).
//!
//! `smtp_forward.ini`: `[main] host`, `port` (25), `auth_user`, `auth_pass`,
//! `enable_outbound` (default true: relayed mail is forwarded too), and per-domain sections
//! `[example.com] host=… port=…` that override `[main]` for that recipient domain.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError, IniFile};
use crate::hooks::{HMail, Hook, HookContext, HookName, HookResult, HookReturn, OutboundHook, Outcome, Plugin};

const NOTE: &str = "smtp_forward";

pub struct SmtpForward {
    main: Option<String>,
    domains: HashMap<String, String>,
    enable_outbound: bool,
}

fn target(ini: &IniFile, section: &str, fallback: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(host) = ini.get(section, "host").filter(|h| !h.is_empty()).or(fallback) else {
        return Ok(None);
    };
    let port = ini.u64(section, "port", ini.u64("main", "port", 25)?)?;
    if port == 0 || port > 65535 {
        return Err(ini.invalid(section, "port", "not a TCP port"));
    }
    let auth = match (
        ini.get(section, "auth_user").or(ini.get("main", "auth_user")),
        ini.get(section, "auth_pass").or(ini.get("main", "auth_pass")),
    ) {
        (Some(u), Some(p)) if !u.is_empty() => format!("{}:{}@", escape(u), escape(p)),
        _ => String::new(),
    };
    Ok(Some(format!("smtp://{auth}{host}:{port}")))
}

fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'@' | b':' | b'%' | b'/' | b',' => format!("%{b:02X}"),
            _ => (b as char).to_string(),
        })
        .collect()
}

impl SmtpForward {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("smtp_forward.ini")?;
        let main = target(&ini, "main", None)?;
        let main_host = ini.get("main", "host").map(String::from);
        let mut domains = HashMap::new();
        for section in ini.sections() {
            if section != "main" {
                if let Some(t) = target(&ini, &section, main_host.as_deref())? {
                    domains.insert(section.to_ascii_lowercase(), t);
                }
            }
        }
        Ok(Arc::new(SmtpForward {
            main,
            domains,
            enable_outbound: ini.bool("main", "enable_outbound", true)?,
        }))
    }

    fn route(&self, domain: &str) -> Option<&String> {
        self.domains.get(&domain.to_ascii_lowercase()).or(self.main.as_ref())
    }
}

impl Plugin for SmtpForward {
    fn name(&self) -> &str {
        "queue/smtp_forward"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Queue, HookName::QueueOutbound, HookName::GetMx]
    }
    fn call<'a>(&'a self, hook: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let forward = matches!(hook, Hook::Queue) || (matches!(hook, Hook::QueueOutbound) && self.enable_outbound);
        if let (true, Some(txn)) = (forward, cx.txn.as_deref_mut()) {
            txn.notes.insert(NOTE.into(), true.into());
        }
        HookResult::CONT.into()
    }
    fn call_outbound<'a>(&'a self, hook: &'a OutboundHook, item: &'a mut HMail<'_>) -> HookReturn<'a> {
        let OutboundHook::GetMx { domain } = hook else {
            return HookResult::CONT.into();
        };
        let note = |k: &str| item.todo.notes.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        // DSNs posta generates go out the way relayed mail does.
        let marked = note(NOTE) || (self.enable_outbound && note(crate::queue::spool::BOUNCE_NOTE));
        match (marked, self.route(domain)) {
            (true, Some(t)) => HookResult::with_msg(Outcome::Ok, t.clone()).into(),
            _ => HookResult::CONT.into(),
        }
    }
}
