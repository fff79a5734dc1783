//! `queue/discard`: accept the message and drop it (for benchmarks and sinks).
//!
//! Haraka's version only discards when `notes.discard` or an environment variable says so;
//! posta's discards whenever the plugin is listed, which is what listing it means.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};

pub struct Discard;

impl Discard {
    pub fn build(_: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        Ok(Arc::new(Discard))
    }
}

impl Plugin for Discard {
    fn name(&self) -> &str {
        "queue/discard"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Queue, HookName::QueueOutbound]
    }
    fn call<'a>(&'a self, _: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        HookResult::with_msg(Outcome::Ok, "Message Queued").into()
    }
}
