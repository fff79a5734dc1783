//! `queue/lmtp`: deliver local mail over LMTP (Haraka's lmtp.ini), as a route through the
//! durable queue: the `queue` hook marks the message (`notes.using_lmtp`), `get_mx` answers
//! `lmtp://host:port`.
//!
//! `lmtp.ini`: `[main] host` (127.0.0.1), `port` (24), and per-domain sections.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError, IniFile};
use crate::hooks::{HMail, Hook, HookContext, HookName, HookResult, HookReturn, OutboundHook, Outcome, Plugin};

pub struct Lmtp {
    main: String,
    domains: HashMap<String, String>,
}

fn target(ini: &IniFile, section: &str) -> Result<String, ConfigError> {
    let host = ini.string(section, "host", &ini.string("main", "host", "127.0.0.1"));
    let port = ini.u64(section, "port", ini.u64("main", "port", 24)?)?;
    if port == 0 || port > 65535 {
        return Err(ini.invalid(section, "port", "not a TCP port"));
    }
    Ok(format!("lmtp://{host}:{port}"))
}

impl Lmtp {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("lmtp.ini")?;
        let mut domains = HashMap::new();
        for s in ini.sections().into_iter().filter(|s| s != "main") {
            domains.insert(s.to_ascii_lowercase(), target(&ini, &s)?);
        }
        Ok(Arc::new(Lmtp {
            main: target(&ini, "main")?,
            domains,
        }))
    }
}

impl Plugin for Lmtp {
    fn name(&self) -> &str {
        "queue/lmtp"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Queue, HookName::GetMx]
    }
    fn call<'a>(&'a self, _: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        if let Some(txn) = cx.txn.as_deref_mut() {
            txn.notes.insert("using_lmtp".into(), true.into());
        }
        HookResult::CONT.into()
    }
    fn call_outbound<'a>(&'a self, hook: &'a OutboundHook, item: &'a mut HMail<'_>) -> HookReturn<'a> {
        let OutboundHook::GetMx { domain } = hook else {
            return HookResult::CONT.into();
        };
        if !item
            .todo
            .notes
            .get("using_lmtp")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
        {
            return HookResult::CONT.into();
        }
        let t = self.domains.get(&domain.to_ascii_lowercase()).unwrap_or(&self.main);
        HookResult::with_msg(Outcome::Ok, t.clone()).into()
    }
}
