//! `early_talker`: delay the banner and refuse clients that talk before it is their turn.
//!
//! Config `early_talker.ini`: `[main] pause` (seconds before the banner, as in Haraka;
//! fractions allowed; default 1),
//! `reject` (default true: refuse at DATA with `DENYDISCONNECT You talk too soon`),
//! `[skip] private` (default true: no pause and no reject for private/loopback clients,
//! as Haraka skips them).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin};

pub struct EarlyTalker {
    pause: Duration,
    reject: bool,
    skip_private: bool,
}

impl EarlyTalker {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        let ini = cfg.ini("early_talker.ini")?;
        Ok(Arc::new(EarlyTalker {
            pause: Duration::from_secs_f64(ini.f64("main", "pause", 1.0)?.min(300.0)),
            reject: ini.bool("main", "reject", true)?,
            skip_private: ini.bool("skip", "private", true)?,
        }))
    }
}

impl Plugin for EarlyTalker {
    fn name(&self) -> &str {
        "early_talker"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Connect, HookName::Data]
    }
    fn call<'a>(&'a self, hook: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        if self.skip_private && cx.conn.remote.is_private {
            return HookResult::CONT.into();
        }
        match hook {
            Hook::Connect if !self.pause.is_zero() => {
                let pause = self.pause;
                HookReturn::Later(Box::pin(async move {
                    tokio::time::sleep(pause).await;
                    HookResult::CONT
                }))
            }
            Hook::Data if self.reject && cx.conn.early_talker => {
                HookResult::with_msg(Outcome::DenyDisconnect, "You talk too soon").into()
            }
            _ => HookResult::CONT.into(),
        }
    }
}
