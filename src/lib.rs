//! posta: an actor-model mail transfer agent that speaks Haraka's config directory, hook
//! names, return codes and queue format.
//!
//! The map of the code is `DESIGN.md`: `protocol` (sans-IO SMTP), `hooks` (typed hooks and
//! the plugin chain), `plugins` (built-ins, one file per Haraka name), `queue` (queue file
//! codec and durable commit), `actors` (thin actix shells), `config` (the config dir).
#![forbid(unsafe_code)]

pub mod actors;
pub mod config;
pub mod hooks;
pub mod install;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod plugins;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod top;
