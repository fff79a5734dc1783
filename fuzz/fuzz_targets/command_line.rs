//! One command line through `check_line`, `parse_command` and the argument parsers.
//! The first byte picks the session context; the rest is the line (without CRLF).
#![no_main]

use libfuzzer_sys::fuzz_target;
use posta::protocol::command::{check_line, parse_bdat, parse_command, parse_mail, parse_rcpt, Command, ParseContext};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, line)) = data.split_first() else {
        return;
    };
    let cx = ParseContext {
        esmtp: flags & 1 != 0,
        strict: flags & 2 != 0,
        smtputf8_offered: flags & 4 != 0,
        utf8_txn: flags & 8 != 0,
        max_bytes: if flags & 16 != 0 { 1000 } else { 0 },
    };
    let text = match check_line(line, flags & 32 != 0) {
        Ok(t) => t,
        Err(e) => {
            assert!(e.reply().code >= 500);
            return;
        }
    };
    assert!(!text.contains('\0') && !text.contains('\r'));
    let check = |r: posta::protocol::Reply| {
        assert!((400..600).contains(&r.code));
        assert!(r.to_wire().split("\r\n").all(|l| l.len() <= 510));
    };
    match parse_command(text) {
        Command::Mail(a) => {
            if let Err(r) = parse_mail(a, cx) {
                check(r);
            }
        }
        Command::Rcpt(a) => {
            if let Err(r) = parse_rcpt(a, cx) {
                check(r);
            }
        }
        Command::Bdat(a) => {
            let _ = parse_bdat(a);
        }
        _ => {}
    }
    // The argument parsers on the whole text as well (they must not rely on the verb).
    if let Err(r) = parse_mail(text, cx) {
        check(r);
    }
    if let Err(r) = parse_rcpt(text, cx) {
        check(r);
    }
});
