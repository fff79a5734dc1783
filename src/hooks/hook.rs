//! The inbound hooks, as typed messages (Haraka's hook names and parameters).

use super::state::Recipient;
use crate::protocol::address::Mailbox;
use crate::protocol::command::MailParams;
use crate::protocol::sasl::AuthAttempt;

/// Every hook name posta runs, in Haraka's spelling (see [`HookName::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum HookName {
    ConnectInit,
    LookupRdns,
    Connect,
    Helo,
    Ehlo,
    Capabilities,
    UnrecognizedCommand,
    Vrfy,
    Noop,
    Mail,
    Rcpt,
    RcptOk,
    Data,
    DataPost,
    MaxDataExceeded,
    Queue,
    QueueOutbound,
    QueueOk,
    Rset,
    ResetTransaction,
    Quit,
    Disconnect,
    /// posta's own: a finished SMTP AUTH exchange for the auth backends to judge.
    Auth,
    // Outbound hooks (Outbound.md), run by the delivery side with an `HMail`.
    PreSendTransEmail,
    SendEmail,
    GetMx,
    Deferred,
    Bounce,
    Delivered,
}

impl HookName {
    /// All hooks, inbound in session order, then outbound.
    pub const ALL: [HookName; 29] = [
        HookName::ConnectInit,
        HookName::LookupRdns,
        HookName::Connect,
        HookName::Helo,
        HookName::Ehlo,
        HookName::Capabilities,
        HookName::UnrecognizedCommand,
        HookName::Vrfy,
        HookName::Noop,
        HookName::Mail,
        HookName::Rcpt,
        HookName::RcptOk,
        HookName::Data,
        HookName::DataPost,
        HookName::MaxDataExceeded,
        HookName::Queue,
        HookName::QueueOutbound,
        HookName::QueueOk,
        HookName::Rset,
        HookName::ResetTransaction,
        HookName::Quit,
        HookName::Disconnect,
        HookName::Auth,
        HookName::PreSendTransEmail,
        HookName::SendEmail,
        HookName::GetMx,
        HookName::Deferred,
        HookName::Bounce,
        HookName::Delivered,
    ];

    /// Haraka's name for this hook.
    pub fn as_str(self) -> &'static str {
        match self {
            HookName::ConnectInit => "connect_init",
            HookName::LookupRdns => "lookup_rdns",
            HookName::Connect => "connect",
            HookName::Helo => "helo",
            HookName::Ehlo => "ehlo",
            HookName::Capabilities => "capabilities",
            HookName::UnrecognizedCommand => "unrecognized_command",
            HookName::Vrfy => "vrfy",
            HookName::Noop => "noop",
            HookName::Mail => "mail",
            HookName::Rcpt => "rcpt",
            HookName::RcptOk => "rcpt_ok",
            HookName::Data => "data",
            HookName::DataPost => "data_post",
            HookName::MaxDataExceeded => "max_data_exceeded",
            HookName::Queue => "queue",
            HookName::QueueOutbound => "queue_outbound",
            HookName::QueueOk => "queue_ok",
            HookName::Rset => "rset",
            HookName::ResetTransaction => "reset_transaction",
            HookName::Quit => "quit",
            HookName::Disconnect => "disconnect",
            HookName::Auth => "auth",
            HookName::PreSendTransEmail => "pre_send_trans_email",
            HookName::SendEmail => "send_email",
            HookName::GetMx => "get_mx",
            HookName::Deferred => "deferred",
            HookName::Bounce => "bounce",
            HookName::Delivered => "delivered",
        }
    }

    /// Bit for [`HookSet`].
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Hooks whose every plugin runs and whose result is ignored (Haraka: connect_init and
    /// disconnect; posta adds the informational outbound delivered and pre_send_trans_email).
    pub fn runs_all(self) -> bool {
        matches!(
            self,
            HookName::ConnectInit | HookName::Disconnect | HookName::Delivered | HookName::PreSendTransEmail
        )
    }
}

/// A set of hook names (a bit mask): the hooks that have at least one plugin. The session
/// skips hooks outside the set, which keeps the common path free of empty chain runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet(pub u32);

impl HookSet {
    pub fn all() -> Self {
        HookSet(u32::MAX)
    }
    pub fn insert(&mut self, h: HookName) {
        self.0 |= h.bit();
    }
    pub fn contains(&self, h: HookName) -> bool {
        self.0 & h.bit() != 0
    }
}

/// One hook call with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    ConnectInit,
    LookupRdns,
    Connect,
    Helo(String),
    Ehlo(String),
    Capabilities,
    UnrecognizedCommand {
        verb: String,
        args: String,
    },
    Vrfy(String),
    Noop,
    Mail(Option<Mailbox>, MailParams),
    Rcpt(Recipient),
    RcptOk(Recipient),
    Data,
    DataPost,
    MaxDataExceeded,
    Queue,
    QueueOutbound,
    /// The message that will be sent with the 250.
    QueueOk(String),
    Rset,
    ResetTransaction,
    Quit,
    Disconnect,
    /// SMTP AUTH credentials to check (Debug prints the user, never the secret). OK
    /// authenticates, DENY (or no plugin saying OK) fails, DENYSOFT is a temporary failure.
    Auth(AuthAttempt),
    /// Outbound: just before the message is written to the queue (Haraka's
    /// `send_trans_email`); the result is ignored.
    PreSendTransEmail,
}

impl Hook {
    pub fn name(&self) -> HookName {
        match self {
            Hook::ConnectInit => HookName::ConnectInit,
            Hook::LookupRdns => HookName::LookupRdns,
            Hook::Connect => HookName::Connect,
            Hook::Helo(_) => HookName::Helo,
            Hook::Ehlo(_) => HookName::Ehlo,
            Hook::Capabilities => HookName::Capabilities,
            Hook::UnrecognizedCommand { .. } => HookName::UnrecognizedCommand,
            Hook::Vrfy(_) => HookName::Vrfy,
            Hook::Noop => HookName::Noop,
            Hook::Mail(..) => HookName::Mail,
            Hook::Rcpt(_) => HookName::Rcpt,
            Hook::RcptOk(_) => HookName::RcptOk,
            Hook::Data => HookName::Data,
            Hook::DataPost => HookName::DataPost,
            Hook::MaxDataExceeded => HookName::MaxDataExceeded,
            Hook::Queue => HookName::Queue,
            Hook::QueueOutbound => HookName::QueueOutbound,
            Hook::QueueOk(_) => HookName::QueueOk,
            Hook::Rset => HookName::Rset,
            Hook::ResetTransaction => HookName::ResetTransaction,
            Hook::Quit => HookName::Quit,
            Hook::Disconnect => HookName::Disconnect,
            Hook::Auth(_) => HookName::Auth,
            Hook::PreSendTransEmail => HookName::PreSendTransEmail,
        }
    }
}
