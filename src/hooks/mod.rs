//! Hooks: typed hook messages, Haraka's return codes, the plugin trait and the chain runner.

pub mod hook;
pub mod outbound;
pub mod outcome;
pub mod plugin;
pub mod state;

pub use hook::{Hook, HookName, HookSet};
pub use outbound::{Delivery, HMail, OutboundHook};
pub use outcome::{HookResult, Outcome};
pub use plugin::{HookContext, HookReturn, Plugin, PluginChain, PluginPanic, PluginRegistry};
pub use state::{Connection, Notes, Recipient, Transaction};
