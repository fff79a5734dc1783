//! `tls`: inbound TLS, as Haraka's `tls` plugin. Listing it in `config/plugins` turns on
//! STARTTLS (RFC 3207) and implicit TLS on `smtp.ini [main] smtps_port` (RFC 8314).
//!
//! The work is in the core: the session offers and answers STARTTLS (`protocol::session`),
//! the connection runs the handshake (`actors::connection`), `config::tls` reads `tls.ini`.
//! Building the plugin loads the key and certificates, so a broken one stops start-up,
//! `posta check-config` and a reload, naming the file. Keys: docs/plugins/tls.md.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Plugin};

pub struct Tls;

impl Tls {
    pub fn build(cfg: &Config) -> Result<Arc<dyn Plugin>, ConfigError> {
        if let Some(t) = &cfg.tls {
            t.server(&cfg.dir)?;
        }
        Ok(Arc::new(Tls))
    }
}

impl Plugin for Tls {
    fn name(&self) -> &str {
        "tls"
    }
    fn hooks(&self) -> &[HookName] {
        &[]
    }
    fn call<'a>(&'a self, _: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        HookResult::CONT.into()
    }
}
