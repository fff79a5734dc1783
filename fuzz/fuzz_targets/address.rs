//! `parse_path` on arbitrary text. The first byte picks the rules. An accepted mailbox must be
//! free of control characters, within the RFC 5321 length limits, and parse back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posta::protocol::address::{parse_path, PathRules};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        utf8: flags & 1 != 0,
        strict: flags & 2 != 0,
        rcpt: flags & 4 != 0,
    };
    let text = String::from_utf8_lossy(rest);
    if let Ok(Some(m)) = parse_path(&text, rules) {
        let s = m.to_string();
        assert!(!s.chars().any(char::is_control), "control character in {s:?}");
        assert!(m.local.len() <= 64 && m.domain.len() <= 255);
        assert!(rules.utf8 || !m.is_utf8());
        if !m.domain.is_empty() {
            assert_eq!(parse_path(&format!("<{s}>"), rules), Ok(Some(m)));
        }
    }
});
