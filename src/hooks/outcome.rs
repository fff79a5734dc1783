//! Haraka's hook return codes and what a plugin returns.

use std::fmt;

/// A plugin's verdict, with Haraka's names and numeric values (haraka-constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// 900: no opinion, run the next plugin.
    Cont,
    /// 901: stop the chain; the session behaves as for CONT.
    Stop,
    /// 902: reject with a 5xx.
    Deny,
    /// 903: reject with a 4xx.
    DenySoft,
    /// 904: reject with a 5xx and disconnect.
    DenyDisconnect,
    /// 905: disconnect (at connect/lookup_rdns with 554 first).
    Disconnect,
    /// 906: accept; skip the rest of the chain.
    Ok,
    /// 907: Haraka runs the hook named in the message (unrecognized_command only); posta
    /// does not implement that yet and treats it as CONT.
    NextHook,
    /// 908: delay (outbound `send_email` only).
    Delay,
    /// 909: reject with a 4xx and disconnect.
    DenySoftDisconnect,
}

impl Outcome {
    /// Haraka's numeric value.
    pub fn code(self) -> u16 {
        match self {
            Outcome::Cont => 900,
            Outcome::Stop => 901,
            Outcome::Deny => 902,
            Outcome::DenySoft => 903,
            Outcome::DenyDisconnect => 904,
            Outcome::Disconnect => 905,
            Outcome::Ok => 906,
            Outcome::NextHook => 907,
            Outcome::Delay => 908,
            Outcome::DenySoftDisconnect => 909,
        }
    }

    /// Haraka's constant name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Cont => "CONT",
            Outcome::Stop => "STOP",
            Outcome::Deny => "DENY",
            Outcome::DenySoft => "DENYSOFT",
            Outcome::DenyDisconnect => "DENYDISCONNECT",
            Outcome::Disconnect => "DISCONNECT",
            Outcome::Ok => "OK",
            Outcome::NextHook => "NEXT_HOOK",
            Outcome::Delay => "DELAY",
            Outcome::DenySoftDisconnect => "DENYSOFTDISCONNECT",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plugin returned for one hook: a code and an optional message that replaces the
/// default reply text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    pub outcome: Outcome,
    pub msg: Option<String>,
}

impl HookResult {
    pub const CONT: HookResult = HookResult {
        outcome: Outcome::Cont,
        msg: None,
    };

    pub fn new(outcome: Outcome) -> Self {
        HookResult { outcome, msg: None }
    }

    pub fn with_msg(outcome: Outcome, msg: impl Into<String>) -> Self {
        HookResult {
            outcome,
            msg: Some(msg.into()),
        }
    }
}
