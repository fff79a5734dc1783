//! `deliver/maildir` (posta): deliver mail for `host_list` domains into Maildirs under
//! `<path>/<domain>/<user>/` (`maildir.ini [main] path`, default `../var/mail`, relative to
//! the config dir). Relayed mail is never delivered locally by this route.

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{HMail, Hook, HookContext, HookName, HookResult, HookReturn, OutboundHook, Outcome, Plugin};

const NOTE: &str = "local_delivery";

pub struct Maildir {
    root: String,
    domains: HashSet<String>,
}

impl Maildir {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("maildir.ini")?;
        let path = cfg.dir.join(ini.string("main", "path", "../var/mail"));
        let root = path
            .to_str()
            .ok_or_else(|| ConfigError::new("maildir.ini", Some("[main] path".into()), "not valid UTF-8"))?
            .to_string();
        Ok(Arc::new(Maildir {
            root,
            domains: cfg.host_list.iter().cloned().collect(),
        }))
    }
}

impl Plugin for Maildir {
    fn name(&self) -> &str {
        "deliver/maildir"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Queue, HookName::GetMx]
    }
    fn call<'a>(&'a self, _: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        if let Some(txn) = cx.txn.as_deref_mut() {
            txn.notes.insert(NOTE.into(), true.into());
        }
        HookResult::CONT.into()
    }
    fn call_outbound<'a>(&'a self, hook: &'a OutboundHook, item: &'a mut HMail<'_>) -> HookReturn<'a> {
        let OutboundHook::GetMx { domain } = hook else {
            return HookResult::CONT.into();
        };
        let local = item.todo.notes.get(NOTE).and_then(|v| v.as_bool()).unwrap_or(false);
        if local && self.domains.contains(&domain.to_ascii_lowercase()) {
            return HookResult::with_msg(Outcome::Ok, format!("maildir:{}", self.root)).into();
        }
        HookResult::CONT.into()
    }
}
