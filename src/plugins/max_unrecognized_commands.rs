//! `max_unrecognized_commands`: disconnect a client after too many unknown commands
//! (Haraka folded this into `limit`; the name and file are kept).
//!
//! Config: `config/max_unrecognized_commands` (a number, default 10).

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};

pub struct MaxUnrecognized {
    max: u32,
}

impl MaxUnrecognized {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let max = match cfg.value("max_unrecognized_commands")? {
            None => 10,
            Some(v) => v
                .parse()
                .map_err(|_| ConfigError::new("max_unrecognized_commands", None, format!("'{v}' is not a number")))?,
        };
        Ok(Arc::new(MaxUnrecognized { max }))
    }
}

impl Plugin for MaxUnrecognized {
    fn name(&self) -> &str {
        "max_unrecognized_commands"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::UnrecognizedCommand]
    }
    fn call<'a>(&'a self, _: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        if cx.conn.unrecognized_commands > self.max {
            return HookResult::with_msg(Outcome::DenyDisconnect, "Too many unrecognized commands").into();
        }
        HookResult::CONT.into()
    }
}
