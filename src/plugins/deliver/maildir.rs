//! `deliver/maildir` (posta): deliver mail for `host_list` domains into Maildirs under
//! `<path>/<domain>/<user>/` (`maildir.ini [main] path`, default `../var/mail`, relative to
//! the config dir), whether it came from outside, from a relaying client, or is a DSN.

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{HMail, Hook, HookContext, HookName, HookResult, HookReturn, OutboundHook, Outcome, Plugin};

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
        &[HookName::GetMx]
    }
    fn call<'a>(&'a self, _: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        HookResult::CONT.into()
    }
    fn call_outbound<'a>(&'a self, hook: &'a OutboundHook, _: &'a mut HMail<'_>) -> HookReturn<'a> {
        let OutboundHook::GetMx { domain } = hook else {
            return HookResult::CONT.into();
        };
        if self.domains.contains(&domain.to_ascii_lowercase()) {
            return HookResult::with_msg(Outcome::Ok, format!("maildir:{}", self.root)).into();
        }
        HookResult::CONT.into()
    }
}
