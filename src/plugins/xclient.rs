//! `xclient`: Postfix's XCLIENT command, for SMTP proxies (nginx mail, another MTA) that pass
//! on who their client is. Listing this plugin in `config/plugins` switches XCLIENT on for
//! the hosts in `config/xclient.hosts`; without it XCLIENT is an unknown command.
//!
//! The command itself lives in the session (`protocol::session`, parsing in
//! `protocol::xclient`), because accepting it restarts the session: a plugin only sees a hook
//! and cannot reset the connection. The hosts list is read with the rest of the config
//! (`config::load`), so a SIGHUP reload changes it for new sessions. This file only makes the
//! name known; it runs no hook.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Plugin};

pub struct Xclient;

impl Xclient {
    pub fn build(_: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        Ok(Arc::new(Xclient))
    }
}

impl Plugin for Xclient {
    fn name(&self) -> &str {
        "xclient"
    }
    fn hooks(&self) -> &[HookName] {
        &[]
    }
    fn call<'a>(&'a self, _: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        HookResult::CONT.into()
    }
}
