//! Built-in plugins, one file per Haraka plugin name.

pub mod auth;
pub mod deliver;
#[path = "early_talker.rs"]
pub mod early_talker;
#[path = "helo.checks.rs"]
pub mod helo_checks;
#[path = "max_unrecognized_commands.rs"]
pub mod max_unrecognized_commands;
pub mod queue;
#[path = "rcpt_to.in_host_list.rs"]
pub mod rcpt_to_in_host_list;
pub mod relay;
pub mod tls;
pub mod xclient;

use crate::hooks::PluginRegistry;

/// Register every built-in under its Haraka name.
pub fn register_builtins(r: &mut PluginRegistry) {
    r.register("rcpt_to.in_host_list", rcpt_to_in_host_list::InHostList::build);
    r.register("queue/discard", queue::discard::Discard::build);
    r.register("helo.checks", helo_checks::HeloChecks::build);
    r.register("early_talker", early_talker::EarlyTalker::build);
    r.register(
        "max_unrecognized_commands",
        max_unrecognized_commands::MaxUnrecognized::build,
    );
    r.register("relay", relay::Relay::build);
    r.register("queue/smtp_forward", queue::smtp_forward::SmtpForward::build);
    r.register("queue/lmtp", queue::lmtp::Lmtp::build);
    r.register("deliver/maildir", deliver::maildir::Maildir::build);
    r.register("auth/flat_file", auth::flat_file::FlatFile::build);
    r.register("auth/auth_proxy", auth::auth_proxy::AuthProxy::build);
    r.register("tls", tls::Tls::build);
    r.register("xclient", xclient::Xclient::build);
}
