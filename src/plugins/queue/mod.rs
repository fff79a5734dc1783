//! `queue/*` plugins.

pub mod discard;
pub mod lmtp;
pub mod smtp_forward;
