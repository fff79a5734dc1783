//! `queue/*` plugins.

pub mod discard;
