//! The plugin trait and the chain that runs plugins for a hook.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;

use super::hook::{Hook, HookName, HookSet};
use super::outbound::{HMail, OutboundHook};
use super::outcome::{HookResult, Outcome};
use super::state::{Connection, Transaction};
use crate::config::{Config, ConfigError};
use crate::protocol::sasl::Mechanism;

/// What a plugin sees during a hook: the connection and, from MAIL on, the transaction.
pub struct HookContext<'a> {
    pub conn: &'a mut Connection,
    pub txn: Option<&'a mut Transaction>,
}

/// A plugin's answer: ready now (the common case, no allocation), or a future for plugins
/// that wait on something (a timer, DNS, another server).
pub enum HookReturn<'a> {
    Done(HookResult),
    Later(LocalBoxFuture<'a, HookResult>),
}

impl From<HookResult> for HookReturn<'_> {
    fn from(r: HookResult) -> Self {
        HookReturn::Done(r)
    }
}

/// A built-in plugin. Adding one is a new file under `src/plugins/` and one line in the
/// registry; the core does not change.
pub trait Plugin: Send + Sync {
    /// The Haraka name, as written in `config/plugins`.
    fn name(&self) -> &str;
    /// The hooks this plugin wants, in no particular order.
    fn hooks(&self) -> &[HookName];
    /// Run one hook.
    fn call<'a>(&'a self, hook: &'a Hook, cx: &'a mut HookContext<'_>) -> HookReturn<'a>;
    /// Run one outbound hook (listed in `hooks()` like the inbound ones).
    fn call_outbound<'a>(&'a self, hook: &'a OutboundHook, item: &'a mut HMail<'_>) -> HookReturn<'a> {
        let _ = (hook, item);
        HookResult::CONT.into()
    }
    /// The plugin's own default timeout; `config/<name>.timeout` overrides it.
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// SASL mechanisms this plugin can check in the `auth` hook. The session advertises the
    /// union over all plugins (none: AUTH is not offered).
    fn auth_mechanisms(&self) -> &[Mechanism] {
        &[]
    }
}

/// Builds a plugin from the config directory.
pub type PluginFactory = Arc<dyn Fn(&Config) -> Result<Arc<dyn Plugin>, ConfigError> + Send + Sync>;

/// Known plugin names and how to build them.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    factories: HashMap<String, PluginFactory>,
}

impl PluginRegistry {
    /// A registry with every built-in plugin.
    pub fn builtin() -> Self {
        let mut r = PluginRegistry::default();
        crate::plugins::register_builtins(&mut r);
        r
    }

    /// Add (or replace) a plugin under `name`.
    pub fn register<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&Config) -> Result<Arc<dyn Plugin>, ConfigError> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Arc::new(f));
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.factories.keys().cloned().collect();
        v.sort();
        v
    }

    /// Build the chain for `config/plugins`. An unknown name stops start-up.
    pub fn build(&self, cfg: &Config) -> Result<PluginChain, ConfigError> {
        let mut plugins = Vec::new();
        let mut timeouts = HashMap::new();
        for name in &cfg.plugins {
            let file = format!("{name}.timeout");
            if let Some(v) = cfg.value(&file)? {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| ConfigError::new(&file, None, format!("'{v}' is not a number of seconds")))?;
                timeouts.insert(name.clone(), Duration::from_secs(secs));
            }
            let f = self.factories.get(name).ok_or_else(|| {
                ConfigError::new(
                    "plugins",
                    None,
                    format!(
                        "unknown plugin '{name}' (built-in plugins: {})",
                        self.names().join(", ")
                    ),
                )
            })?;
            plugins.push(f(cfg)?);
        }
        let mut chain = PluginChain::new(plugins, cfg.plugin_timeout);
        chain.timeouts = timeouts;
        Ok(chain)
    }
}

/// A plugin panicked: the connection is closed with `421 4.3.0`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} panicked in hook {hook}")]
pub struct PluginPanic {
    pub plugin: String,
    pub hook: &'static str,
}

/// The plugins of `config/plugins`, indexed by hook.
pub struct PluginChain {
    by_hook: Vec<Vec<Arc<dyn Plugin>>>,
    timeout: Duration,
    /// `config/<plugin>.timeout` overrides.
    timeouts: HashMap<String, Duration>,
    set: HookSet,
    /// Union of the plugins' [`Plugin::auth_mechanisms`], in advertising order.
    auth_mechanisms: Vec<Mechanism>,
}

impl PluginChain {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>, timeout: Duration) -> Self {
        let mut by_hook: Vec<Vec<Arc<dyn Plugin>>> = vec![Vec::new(); HookName::ALL.len()];
        let mut set = HookSet::default();
        for p in &plugins {
            for h in p.hooks() {
                by_hook[*h as usize].push(p.clone());
                set.insert(*h);
            }
        }
        let mut auth_mechanisms: Vec<Mechanism> = plugins.iter().flat_map(|p| p.auth_mechanisms().to_vec()).collect();
        auth_mechanisms.sort();
        auth_mechanisms.dedup();
        PluginChain {
            by_hook,
            timeout,
            timeouts: HashMap::new(),
            set,
            auth_mechanisms,
        }
    }

    /// The SASL mechanisms some plugin can check (empty: no AUTH).
    pub fn auth_mechanisms(&self) -> &[Mechanism] {
        &self.auth_mechanisms
    }

    /// The hooks that have at least one plugin.
    pub fn hook_set(&self) -> HookSet {
        self.set
    }

    /// Run the chain for `hook`: plugins in `config/plugins` order, the first result that is
    /// not CONT ends it (connect_init and disconnect run every plugin and ignore results).
    pub async fn run(&self, hook: &Hook, cx: &mut HookContext<'_>) -> Result<HookResult, PluginPanic> {
        let name = hook.name();
        for plugin in &self.by_hook[name as usize] {
            if skipped(cx, plugin.name()) {
                continue;
            }
            let r = self.call_one(plugin.as_ref(), hook, cx).await?;
            if !name.runs_all() && r.outcome != Outcome::Cont {
                return Ok(r);
            }
        }
        Ok(HookResult::CONT)
    }

    /// Run the chain for an outbound hook (same rules as [`PluginChain::run`]).
    pub async fn run_outbound(&self, hook: &OutboundHook, item: &mut HMail<'_>) -> Result<HookResult, PluginPanic> {
        let name = hook.name();
        for plugin in &self.by_hook[name as usize] {
            let p = plugin.as_ref();
            let panic = || PluginPanic {
                plugin: p.name().to_string(),
                hook: name.as_str(),
            };
            let mut slot = Some(&mut *item);
            let ret = std::panic::catch_unwind(AssertUnwindSafe(|| slot.take().map(|i| p.call_outbound(hook, i))))
                .ok()
                .flatten()
                .ok_or_else(panic)?;
            let r = self.settle(p, ret).await.map_err(|_| panic())?;
            if !name.runs_all() && r.outcome != Outcome::Cont {
                return Ok(r);
            }
        }
        Ok(HookResult::CONT)
    }

    /// Wait for a plugin's answer with its timeout; `Err` when it panicked.
    async fn settle(&self, p: &dyn Plugin, ret: HookReturn<'_>) -> Result<HookResult, ()> {
        let fut = match ret {
            HookReturn::Done(r) => return Ok(r),
            HookReturn::Later(f) => AssertUnwindSafe(f).catch_unwind(),
        };
        let limit = self
            .timeouts
            .get(p.name())
            .copied()
            .or(p.timeout())
            .unwrap_or(self.timeout);
        let done = if limit.is_zero() {
            Ok(fut.await)
        } else {
            tokio::time::timeout(limit, fut).await
        };
        match done {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(()),
            // Haraka: a plugin past its timeout counts as DENYSOFT.
            Err(_) => Ok(HookResult::with_msg(Outcome::DenySoft, "plugin timeout")),
        }
    }

    async fn call_one(&self, p: &dyn Plugin, hook: &Hook, cx: &mut HookContext<'_>) -> Result<HookResult, PluginPanic> {
        let panic = || PluginPanic {
            plugin: p.name().to_string(),
            hook: hook.name().as_str(),
        };
        let mut slot = Some(cx);
        let ret = std::panic::catch_unwind(AssertUnwindSafe(|| slot.take().map(|cx| p.call(hook, cx))))
            .ok()
            .flatten()
            .ok_or_else(panic)?;
        self.settle(p, ret).await.map_err(|_| panic())
    }
}

/// Haraka's `transaction.notes.skip_plugins`.
fn skipped(cx: &HookContext<'_>, name: &str) -> bool {
    let Some(txn) = cx.txn.as_deref() else {
        return false;
    };
    match txn.notes.get("skip_plugins") {
        Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(name)),
        _ => false,
    }
}
