//! RFC 3464 delivery status notifications. Being written.
