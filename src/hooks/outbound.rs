//! Outbound hooks (Haraka's Outbound.md): what a plugin sees while posta delivers a queue item.

use crate::queue::file::{Todo, TodoAddress};

/// A queue item being delivered (Haraka's `hmail`).
#[derive(Debug)]
pub struct HMail<'a> {
    /// Queue file name.
    pub filename: &'a str,
    /// Temporary failures so far.
    pub num_failures: u32,
    /// The delivery description; plugins may change `notes`.
    pub todo: &'a mut Todo,
}

/// One outbound hook call with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboundHook {
    /// Before the message is written to the queue (retval ignored).
    PreSendTransEmail,
    /// Before delivery starts: `DELAY` with a number of seconds in the message defers it.
    SendEmail,
    /// Route the domain: `OK` with a message listing MX targets (`host[:port]`,
    /// `smtp://[user:pass@]host[:port]`, `lmtp://host[:port]`, comma-separated) replaces DNS;
    /// `DENY` bounces, `DENYSOFT` defers.
    GetMx { domain: String },
    /// A temporary failure: CONT retries after `delay` seconds, `DENYSOFT` with seconds in the
    /// message overrides the delay, `OK` drops the item silently.
    Deferred { delay: u64, err: String },
    /// A permanent failure: CONT sends the DSN, anything else suppresses it.
    Bounce { err: String, bounced: Vec<TodoAddress> },
    /// Delivered (retval ignored).
    Delivered(Delivery),
}

impl OutboundHook {
    pub fn name(&self) -> super::HookName {
        use super::HookName;
        match self {
            OutboundHook::PreSendTransEmail => HookName::PreSendTransEmail,
            OutboundHook::SendEmail => HookName::SendEmail,
            OutboundHook::GetMx { .. } => HookName::GetMx,
            OutboundHook::Deferred { .. } => HookName::Deferred,
            OutboundHook::Bounce { .. } => HookName::Bounce,
            OutboundHook::Delivered(_) => HookName::Delivered,
        }
    }
}

/// The `delivered` hook's parameters, in Haraka's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub host: String,
    pub ip: String,
    pub response: String,
    /// Seconds between queueing and delivery.
    pub delay: f64,
    pub port: u16,
    /// `smtp`, `lmtp` or `maildir`.
    pub mode: &'static str,
    pub ok_recips: Vec<TodoAddress>,
    pub secured: bool,
    pub authenticated: bool,
}
