//! Client side of SMTP/LMTP for outbound delivery (sans-IO). Being written.
