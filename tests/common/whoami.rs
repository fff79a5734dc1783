//! `test/whoami`: a test plugin whose `connect` hook answers OK with a message, which
//! becomes the banner text. The banner then shows what hooks see of the connection, so a
//! test can read it from the client side.

use std::sync::Arc;

use posta::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Outcome, Plugin, PluginRegistry};

pub struct WhoAmI;

impl Plugin for WhoAmI {
    fn name(&self) -> &str {
        "test/whoami"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Connect]
    }
    fn call<'a>(&'a self, _: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let c = &cx.conn;
        let proxy = c
            .notes
            .get("proxy")
            .map(|p| p.to_string())
            .unwrap_or_else(|| "none".into());
        let auth = c.notes.get("auth_user").and_then(|u| u.as_str()).unwrap_or("none");
        let msg = format!(
            "whoami remote={} port={} local={} relaying={} host={} auth={auth} uuid={} proxy={proxy}",
            c.remote.ip,
            c.remote.port,
            c.local,
            c.relaying,
            c.remote.host.as_deref().unwrap_or("none"),
            c.uuid,
        );
        HookResult::with_msg(Outcome::Ok, msg).into()
    }
}

/// The built-in plugins plus `test/whoami`.
pub fn registry() -> PluginRegistry {
    let mut r = PluginRegistry::builtin();
    r.register("test/whoami", |_| Ok(Arc::new(WhoAmI)));
    r
}

/// The `key=value` word of a whoami banner.
pub fn field(banner: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    banner
        .split(' ')
        .find_map(|w| w.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {banner:?}"))
        .to_string()
}
