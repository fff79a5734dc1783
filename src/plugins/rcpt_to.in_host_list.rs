//! `rcpt_to.in_host_list`: accept recipients whose domain is in `config/host_list`.
//!
//! Anything else gets CONT, which the core turns into `550 5.7.1 I cannot deliver mail for
//! <a>` unless the client is relaying. `<postmaster>` (which the session completes to
//! `postmaster@<me>`) is always accepted (RFC 5321 4.5.1).

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};

pub struct InHostList {
    domains: HashSet<String>,
    me: String,
}

impl InHostList {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        Ok(Arc::new(InHostList {
            domains: cfg.host_list.iter().cloned().collect(),
            me: cfg.me.to_ascii_lowercase(),
        }))
    }
}

impl Plugin for InHostList {
    fn name(&self) -> &str {
        "rcpt_to.in_host_list"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Rcpt]
    }
    fn call<'a>(&'a self, hook: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let Hook::Rcpt(r) = hook else {
            return HookResult::CONT.into();
        };
        let domain = r.mailbox.host();
        let postmaster = r.mailbox.local.eq_ignore_ascii_case("postmaster") && domain == self.me;
        let local = postmaster || self.domains.contains(&domain);
        HookResult::new(if local { Outcome::Ok } else { Outcome::Cont }).into()
    }
}
