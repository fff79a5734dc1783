//! Hostile input against the real daemon (reliability requirements section 2):
//! A. end-of-data confusion / SMTP smuggling, C. lengths and character set,
//! D. envelope syntax and parameters, F. command sequencing, limits and BDAT.
//!
//! Every case asserts the exact reply (code and enhanced code), the session state afterwards
//! (still usable, or closed), that no extra reply appeared, and what landed in the queue.

mod common;

use std::io::Read;
use std::path::Path;

use common::*;
use posta::queue::{decode, Todo};

// ----- helpers ---------------------------------------------------------------------------

/// Assert the reply code and the enhanced status code of the first line.
#[track_caller]
fn check(r: &Reply, code: u16, enh: &str) {
    assert_eq!(r.code, code, "expected {code} {enh}, got {r:?}");
    let first = r.lines.first().map(String::as_str).unwrap_or("");
    assert!(
        first == enh || first.starts_with(&format!("{enh} ")),
        "expected enhanced code {enh}, got {r:?}"
    );
}

/// Send a command line and assert code and enhanced code.
#[track_caller]
fn expect_enh(c: &mut Client, line: &str, code: u16, enh: &str) -> Reply {
    let r = c.cmd(line);
    check(&r, code, enh);
    r
}

/// Send raw bytes and read one reply.
#[track_caller]
fn raw(c: &mut Client, bytes: &[u8]) -> Reply {
    c.send(bytes);
    c.reply()
        .unwrap_or_else(|| panic!("connection closed after {:?}", String::from_utf8_lossy(bytes)))
}

/// Read the next reply, which must exist.
#[track_caller]
fn next(c: &mut Client) -> Reply {
    c.reply().expect("a reply, not a closed connection")
}

/// The session is alive and in step: the next reply is exactly NOOP's (no stray reply before it).
#[track_caller]
fn alive(c: &mut Client) {
    let r = c.cmd("NOOP");
    assert_eq!((r.code, r.text()), (250, "2.0.0 OK".to_string()), "NOOP -> {r:?}");
}

/// No transaction is open: RCPT is refused with 503 5.5.1.
#[track_caller]
fn no_transaction(c: &mut Client) {
    expect_enh(c, "RCPT TO:<user@example.test>", 503, "5.5.1");
}

/// The server closed the connection with nothing more to say. A read timeout is a failure.
#[track_caller]
fn assert_closed(c: &mut Client) {
    let mut rest = Vec::new();
    match c.reader.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "bytes after the last reply: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "connection not closed: {e}"
        ),
    }
}

/// A server with `connection.ini` set to `ini`.
fn start_ini(ini: &'static str) -> TestServer {
    start(move |d: &Path| std::fs::write(d.join("connection.ini"), ini).unwrap())
}

/// A client that has sent EHLO.
fn ehlo(srv: &TestServer) -> Client {
    let mut c = srv.client();
    c.expect("EHLO client.example", 250);
    c
}

/// A client that has sent HELO.
fn helo(srv: &TestServer) -> Client {
    let mut c = srv.client();
    c.expect("HELO client.example", 250);
    c
}

/// MAIL + RCPT + DATA (354), ready for body bytes.
fn open_data(c: &mut Client) {
    c.expect("MAIL FROM:<sender@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    c.expect("DATA", 354);
}

/// Every committed queue file, decoded.
fn queued(srv: &TestServer) -> Vec<(Todo, Vec<u8>)> {
    srv.queue_files()
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let (todo, msg) = decode(&bytes).unwrap();
            (todo, msg.to_vec())
        })
        .collect()
}

/// The one and only queued message.
#[track_caller]
fn only_message(srv: &TestServer) -> (Todo, Vec<u8>) {
    let mut all = queued(srv);
    assert_eq!(all.len(), 1, "expected exactly one queue file");
    all.remove(0)
}

#[track_caller]
fn assert_nothing_queued(srv: &TestServer) {
    assert!(
        srv.queue_files().is_empty(),
        "unexpected queue files {:?}",
        srv.queue_files()
    );
}

/// Stored form rules: CRLF only, and no line that a later hop would read as end-of-data.
#[track_caller]
fn assert_stored_form(msg: &[u8]) {
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && msg[i - 1] == b'\r',
                "bare LF at {i} in {:?}",
                String::from_utf8_lossy(msg)
            );
        }
        if b == b'\r' {
            assert_eq!(
                msg.get(i + 1),
                Some(&b'\n'),
                "bare CR at {i} in {:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }
    assert!(msg.ends_with(b"\r\n"), "{:?}", String::from_utf8_lossy(msg));
    assert!(
        !msg.split(|&b| b == b'\n').any(|l| l == b".\r"),
        "lone dot line stored: {:?}",
        String::from_utf8_lossy(msg)
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn assert_contains(hay: &[u8], needle: &[u8]) {
    assert!(
        contains(hay, needle),
        "{:?} not in {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(hay)
    );
}

fn extra<'a>(todo: &'a Todo, key: &str) -> Option<&'a serde_json::Value> {
    todo.extra.get(key)
}

// ----- A. end-of-data confusion (SMTP smuggling) --------------------------------------------

/// The commands an attacker hides after a fake terminator.
const INJECTED: &[u8] =
    b"MAIL FROM:<evil@remote.example>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n";

/// Send `before<fake>INJECTED` + the real `\r\n.\r\n`: exactly one reply, one message, and the
/// injected commands stored as body text right after `stored`.
fn smuggle(fake: &[u8], stored: &[u8]) {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    open_data(&mut c);
    let mut body = b"Subject: test\r\n\r\nbefore".to_vec();
    body.extend_from_slice(fake);
    body.extend_from_slice(INJECTED);
    body.extend_from_slice(b"\r\n.\r\n");
    check(&raw(&mut c, &body), 250, "2.0.0");
    no_transaction(&mut c);
    alive(&mut c);
    let (todo, msg) = only_message(&srv);
    assert_eq!(todo.mail_from.original, "<sender@remote.example>");
    assert_eq!(todo.rcpt_to.len(), 1);
    assert_eq!(todo.rcpt_to[0].original, "<user@example.test>");
    let mut expect = stored.to_vec();
    expect.extend_from_slice(INJECTED);
    assert_contains(&msg, &expect);
    assert_stored_form(&msg);
}

#[test]
fn smuggle_lf_dot_lf() {
    smuggle(b"\n.\n", b"before\r\n..\r\n");
}

#[test]
fn smuggle_lf_dot_crlf() {
    smuggle(b"\n.\r\n", b"before\r\n..\r\n");
}

#[test]
fn smuggle_crlf_dot_lf() {
    smuggle(b"\r\n.\n", b"before\r\n..\r\n");
}

#[test]
fn smuggle_cr_dot_cr() {
    smuggle(b"\r.\r", b"before\r\n..\r\n");
}

#[test]
fn smuggle_crlf_dot_cr() {
    smuggle(b"\r\n.\r", b"before\r\n..\r\n");
}

#[test]
fn smuggle_cr_dot_crlf() {
    smuggle(b"\r.\r\n", b"before\r\n..\r\n");
}

#[test]
fn smuggle_crlf_dot_cr_crlf() {
    smuggle(b"\r\n.\r\r\n", b"before\r\n..\r\n\r\n");
}

#[test]
fn smuggle_nul_before_dot() {
    smuggle(b"\r\n\0.\r\n", b"before\r\n\0.\r\n");
}

#[test]
fn smuggle_nul_after_dot() {
    smuggle(b"\r\n.\0\r\n", b"before\r\n.\0\r\n");
}

#[test]
fn smuggle_at_start_of_data() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    open_data(&mut c);
    let mut body = b"\n.\r\n".to_vec();
    body.extend_from_slice(INJECTED);
    body.extend_from_slice(b"\r\n.\r\n");
    check(&raw(&mut c, &body), 250, "2.0.0");
    no_transaction(&mut c);
    let (_, msg) = only_message(&srv);
    let mut expect = b"\r\n\r\n..\r\n".to_vec();
    expect.extend_from_slice(INJECTED);
    assert_contains(&msg, &expect);
    assert_stored_form(&msg);
}

#[test]
fn smuggle_split_across_writes() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    open_data(&mut c);
    let pieces: [&[u8]; 9] = [
        b"before\r",
        b"\n.",
        b"\n",
        INJECTED,
        b"x\r",
        b"\n",
        b".",
        b"\r",
        b"\nNOOP\r\n",
    ];
    for p in pieces {
        c.send(p);
    }
    check(&next(&mut c), 250, "2.0.0");
    check(&next(&mut c), 250, "2.0.0");
    no_transaction(&mut c);
    let (_, msg) = only_message(&srv);
    let mut expect = b"before\r\n..\r\n".to_vec();
    expect.extend_from_slice(INJECTED);
    expect.extend_from_slice(b"x\r\n");
    assert!(msg.ends_with(&expect), "{:?}", String::from_utf8_lossy(&msg));
}

#[test]
fn smuggle_in_bdat_chunk_is_stuffed() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<sender@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    let mut chunk = b"Subject: b\r\n\r\nx\r\n.\r\n".to_vec();
    chunk.extend_from_slice(INJECTED);
    let mut wire = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    wire.extend_from_slice(&chunk);
    check(&raw(&mut c, &wire), 250, "2.0.0");
    no_transaction(&mut c);
    alive(&mut c);
    let (_, msg) = only_message(&srv);
    let mut expect = b"x\r\n..\r\n".to_vec();
    expect.extend_from_slice(INJECTED);
    assert_contains(&msg, &expect);
    assert_stored_form(&msg);
}

#[test]
fn bare_eol_reject_refuses_bare_lf() {
    let srv = start_ini("[main]\nbare_eol=reject\n");
    let mut c = ehlo(&srv);
    open_data(&mut c);
    check(&raw(&mut c, b"Subject: x\r\n\r\none\ntwo\r\n.\r\n"), 550, "5.6.0");
    no_transaction(&mut c);
    alive(&mut c);
    assert_nothing_queued(&srv);
    // A clean message on the same connection is still accepted.
    check(
        &c.send_mail("a@remote.example", &["user@example.test"], b"clean"),
        250,
        "2.0.0",
    );
    assert_eq!(only_message(&srv).0.rcpt_to.len(), 1);
}

#[test]
fn bare_eol_reject_refuses_smuggling_attempt() {
    let srv = start_ini("[main]\nbare_eol=reject\n");
    let mut c = ehlo(&srv);
    open_data(&mut c);
    let mut body = b"before\n.\r\n".to_vec();
    body.extend_from_slice(INJECTED);
    body.extend_from_slice(b"\r\n.\r\n");
    check(&raw(&mut c, &body), 550, "5.6.0");
    no_transaction(&mut c);
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn bare_eol_reject_applies_to_bdat_text() {
    let srv = start_ini("[main]\nbare_eol=reject\n");
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<sender@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    check(&raw(&mut c, b"BDAT 5 LAST\r\na\nb\rc"), 550, "5.6.0");
    no_transaction(&mut c);
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn pipelined_commands_after_real_dot_are_commands() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    open_data(&mut c);
    c.send(b"one\r\n.\r\nRSET\r\nMAIL FROM:<b@remote.example>\r\nRCPT TO:<z@example.test>\r\nDATA\r\n");
    let first = next(&mut c);
    check(&first, 250, "2.0.0");
    assert!(first.text().starts_with("2.0.0 Message Queued ("), "{first:?}");
    check(&next(&mut c), 250, "2.0.0");
    check(&next(&mut c), 250, "2.1.0");
    check(&next(&mut c), 250, "2.1.5");
    assert_eq!(next(&mut c).code, 354);
    check(&raw(&mut c, b"two\r\n.\r\n"), 250, "2.0.0");
    alive(&mut c);
    let mut all = queued(&srv);
    all.sort_by(|a, b| a.0.mail_from.original.cmp(&b.0.mail_from.original));
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0.mail_from.original, "<b@remote.example>");
    assert!(all[0].1.ends_with(b"\r\ntwo\r\n"));
    assert_eq!(all[1].0.mail_from.original, "<sender@remote.example>");
    assert!(all[1].1.ends_with(b"\r\none\r\n"));
    assert!(!contains(&all[1].1, b"RSET"));
}

// ----- C. lengths and character set -------------------------------------------------------

#[test]
fn command_line_of_512_octets_is_accepted() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    let line = format!("NOOP {}", "x".repeat(505));
    assert_eq!(line.len() + 2, 512);
    check(&c.cmd(&line), 250, "2.0.0");
    alive(&mut c);
}

#[test]
fn command_line_over_512_octets_closes() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    let line = format!("NOOP {}\r\n", "x".repeat(506));
    assert_eq!(line.len(), 513);
    check(&raw(&mut c, line.as_bytes()), 521, "5.5.2");
    assert_closed(&mut c);
}

#[test]
fn very_long_command_line_without_lf_closes() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    let line = format!("MAIL FROM:<{}", "a".repeat(2000));
    check(&raw(&mut c, line.as_bytes()), 521, "5.5.2");
    assert_closed(&mut c);
}

/// Unfold `CRLF SP` continuations.
fn unfold(msg: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(msg).replace("\r\n ", "");
    s.into_bytes()
}

#[track_caller]
fn assert_lines_at_most(msg: &[u8], max: usize) {
    for line in msg.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= max, "stored line of {} octets > {max}", line.len());
    }
}

#[test]
fn overlong_data_line_is_folded_at_default_limit() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    let long = "y".repeat(2000);
    let body = format!("Subject: long\r\n\r\n{long}\r\nshort");
    check(
        &c.send_mail("a@remote.example", &["user@example.test"], body.as_bytes()),
        250,
        "2.0.0",
    );
    alive(&mut c);
    let (_, msg) = only_message(&srv);
    assert_lines_at_most(&msg, 992);
    assert_contains(&msg, format!("\r\n{}\r\n y", "y".repeat(990)).as_bytes());
    assert_contains(&unfold(&msg), format!("\r\n{long}\r\nshort\r\n").as_bytes());
    assert_stored_form(&msg);
}

#[test]
fn overlong_header_is_folded_at_configured_limit() {
    let srv = start_ini("[max]\ndata_line_length=100\n");
    let mut c = ehlo(&srv);
    let subject = format!("Subject: {}", "z".repeat(300));
    let body = format!("{subject}\r\nX-After: 1\r\n\r\nbody");
    check(
        &c.send_mail("a@remote.example", &["user@example.test"], body.as_bytes()),
        250,
        "2.0.0",
    );
    let (_, msg) = only_message(&srv);
    let at = msg
        .windows(9)
        .position(|w| w == b"Subject: ")
        .expect("Subject header stored");
    assert_lines_at_most(&msg[at..], 100);
    assert_contains(&msg, format!("\r\nSubject: {}\r\n z", "z".repeat(89)).as_bytes());
    assert_contains(
        &unfold(&msg),
        format!("\r\n{subject}\r\nX-After: 1\r\n\r\nbody\r\n").as_bytes(),
    );
}

#[test]
fn nul_in_command_is_refused() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    check(&raw(&mut c, b"NOOP\0\r\n"), 500, "5.5.2");
    check(&raw(&mut c, b"MAIL FROM:<a\0b@remote.example>\r\n"), 500, "5.5.2");
    no_transaction(&mut c);
    alive(&mut c);
}

#[test]
fn bare_cr_in_command_is_refused() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    check(&raw(&mut c, b"NOOP\rMAIL FROM:<a@remote.example>\r\n"), 500, "5.5.2");
    no_transaction(&mut c);
    alive(&mut c);
}

#[test]
fn eight_bit_after_helo_is_refused() {
    let srv = start(|_| {});
    let mut c = helo(&srv);
    check(
        &raw(&mut c, "MAIL FROM:<jösé@remote.example>\r\n".as_bytes()),
        500,
        "5.5.2",
    );
    check(&raw(&mut c, b"NOOP \xe9\r\n"), 500, "5.5.2");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    alive(&mut c);
}

#[test]
fn eight_bit_before_any_hello_is_refused() {
    let srv = start(|_| {});
    let mut c = srv.client();
    check(&raw(&mut c, "NOOP é\r\n".as_bytes()), 500, "5.5.2");
    c.expect("EHLO client.example", 250);
    alive(&mut c);
}

#[test]
fn utf8_address_without_smtputf8_is_refused() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<jösé@remote.example>", 553, "5.6.7");
    no_transaction(&mut c);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    expect_enh(&mut c, "RCPT TO:<jösé@example.test>", 553, "5.6.7");
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn utf8_address_with_smtputf8_is_queued() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<jösé@exämple.example> SMTPUTF8", 250, "2.1.0");
    expect_enh(&mut c, "RCPT TO:<ünï@example.test>", 250, "2.1.5");
    c.expect("DATA", 354);
    check(&raw(&mut c, "Subject: ö\r\n\r\nhi\r\n.\r\n".as_bytes()), 250, "2.0.0");
    let (todo, msg) = only_message(&srv);
    assert_eq!(todo.mail_from.original, "<jösé@exämple.example>");
    assert_eq!(todo.rcpt_to[0].original, "<ünï@example.test>");
    assert_eq!(extra(&todo, "smtputf8"), Some(&serde_json::Value::Bool(true)));
    assert_contains(&msg, b" with UTF8SMTP id ");
}

#[test]
fn invalid_utf8_is_refused_even_with_smtputf8() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    check(
        &raw(&mut c, b"MAIL FROM:<\xff\xfe@remote.example> SMTPUTF8\r\n"),
        500,
        "5.5.2",
    );
    no_transaction(&mut c);
    c.expect("MAIL FROM:<a@remote.example> SMTPUTF8", 250);
    check(&raw(&mut c, b"RCPT TO:<j\xc3@example.test>\r\n"), 500, "5.5.2");
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    alive(&mut c);
}

#[test]
fn tls_client_hello_as_first_line_closes() {
    let srv = start(|_| {});
    let mut c = srv.client();
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]);
    hello.extend_from_slice(b"\r\n");
    check(&raw(&mut c, &hello), 501, "5.5.1");
    assert_closed(&mut c);
}

#[test]
fn tls_client_hello_after_ehlo_closes() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    check(&raw(&mut c, &[0x16, 0x03, 0x03, 0x00, 0x10, 0x01, b'\n']), 501, "5.5.1");
    assert_closed(&mut c);
}

#[test]
fn huge_size_values_are_refused() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=26214401", 552, "5.3.4");
    expect_enh(
        &mut c,
        "MAIL FROM:<a@remote.example> SIZE=18446744073709551616",
        552,
        "5.3.4",
    );
    expect_enh(
        &mut c,
        "MAIL FROM:<a@remote.example> SIZE=999999999999999999999999999",
        501,
        "5.5.4",
    );
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=-1", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE", 501, "5.5.4");
    no_transaction(&mut c);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=26214400", 250, "2.1.0");
    alive(&mut c);
}

#[test]
fn message_over_max_bytes_is_refused_after_the_dot() {
    let srv = start_ini("[max]\nbytes=100\n");
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=101", 552, "5.3.4");
    open_data(&mut c);
    let body = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "b".repeat(300));
    check(&raw(&mut c, body.as_bytes()), 552, "5.3.4");
    no_transaction(&mut c);
    alive(&mut c);
    assert_nothing_queued(&srv);
    check(
        &c.send_mail("a@remote.example", &["user@example.test"], b"small"),
        250,
        "2.0.0",
    );
    assert_eq!(queued(&srv).len(), 1);
}

#[test]
fn bdat_over_max_bytes_is_refused_and_drained() {
    let srv = start_ini("[max]\nbytes=100\n");
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    let chunk = "NOOP\r\n".repeat(50);
    check(
        &raw(&mut c, format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes()),
        552,
        "5.3.4",
    );
    no_transaction(&mut c);
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn message_size_boundary() {
    let srv = start_ini("[max]\nbytes=100\n");
    let mut c = ehlo(&srv);
    // 98 octets + CRLF + CRLF-dot-CRLF: a 100-octet message is accepted ...
    let exact = "e".repeat(98);
    check(
        &c.send_mail("a@remote.example", &["user@example.test"], exact.as_bytes()),
        250,
        "2.0.0",
    );
    // ... and a 101-octet one is not.
    let over = "o".repeat(99);
    check(
        &c.send_mail("a@remote.example", &["user@example.test"], over.as_bytes()),
        552,
        "5.3.4",
    );
    alive(&mut c);
    assert_eq!(queued(&srv).len(), 1);
}

#[test]
fn message_size_excludes_stuffing_dots() {
    let srv = start_ini("[max]\nbytes=100\n");
    let mut c = ehlo(&srv);
    // RFC 1870 3: the size counts CRLFs but not the terminating dot or doubled quoting dots.
    // This message is `.` + 97 octets + CRLF = 100 octets, declared and within the limit.
    c.expect("MAIL FROM:<a@remote.example> SIZE=100", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    c.expect("DATA", 354);
    let wire = format!("..{}\r\n.\r\n", "d".repeat(97));
    check(&raw(&mut c, wire.as_bytes()), 250, "2.0.0");
    alive(&mut c);
    assert_eq!(queued(&srv).len(), 1);
}

#[test]
fn bdat_chunks_over_max_bytes_end_the_transaction() {
    let srv = start_ini("[max]\nbytes=100\n");
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    let chunk = "c".repeat(60);
    check(&raw(&mut c, format!("BDAT 60\r\n{chunk}").as_bytes()), 250, "2.0.0");
    check(&raw(&mut c, format!("BDAT 60\r\n{chunk}").as_bytes()), 552, "5.3.4");
    // RFC 3030 2: the transaction is over; a further chunk is skipped and refused.
    check(&raw(&mut c, b"BDAT 6 LAST\r\nHELP\r\n"), 503, "5.5.1");
    alive(&mut c);
    assert_nothing_queued(&srv);
}

// ----- D. envelope syntax and parameters --------------------------------------------------

#[test]
fn source_routes_are_accepted_and_ignored() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<@relay.example:sender@remote.example>", 250, "2.1.0");
    expect_enh(
        &mut c,
        "RCPT TO:<@a.example,@b.example:user@example.test>",
        250,
        "2.1.5",
    );
    expect_enh(&mut c, "RCPT TO:<@[192.0.2.1]:other@example.test>", 250, "2.1.5");
    expect_enh(&mut c, "RCPT TO:<@a.example,b.example:x@example.test>", 501, "5.1.3");
    expect_enh(&mut c, "RCPT TO:<@a.example x@example.test>", 501, "5.1.3");
    c.expect("DATA", 354);
    check(&raw(&mut c, b"hi\r\n.\r\n"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    assert_eq!(todo.mail_from.original, "<sender@remote.example>");
    let rcpts: Vec<_> = todo.rcpt_to.iter().map(|r| r.original.as_str()).collect();
    assert_eq!(rcpts, ["<user@example.test>", "<other@example.test>"]);
}

#[test]
fn quoted_local_parts() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<\"john doe\"@remote.example>", 250, "2.1.0");
    expect_enh(&mut c, "RCPT TO:<\"a>b\"@example.test> NOTIFY=NEVER", 250, "2.1.5");
    expect_enh(&mut c, "RCPT TO:<\"q\\\"x\"@example.test>", 250, "2.1.5");
    expect_enh(&mut c, "RCPT TO:<\"unterminated@example.test>", 501, "5.1.3");
    expect_enh(&mut c, "RCPT TO:<\"a\"b@example.test>", 501, "5.1.3");
    c.expect("DATA", 354);
    check(&raw(&mut c, b"hi\r\n.\r\n"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    assert_eq!(todo.mail_from.user.as_deref(), Some("\"john doe\""));
    assert_eq!(todo.rcpt_to[0].user.as_deref(), Some("\"a>b\""));
    assert_eq!(todo.rcpt_to[1].user.as_deref(), Some("\"q\\\"x\""));
}

#[test]
fn address_literals() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<a@[192.0.2.1]>", 250, "2.1.0");
    c.expect("RSET", 250);
    expect_enh(&mut c, "MAIL FROM:<a@[IPv6:2001:db8::1]>", 250, "2.1.0");
    c.expect("RSET", 250);
    expect_enh(&mut c, "MAIL FROM:<a@[300.0.0.1]>", 501, "5.1.7");
    expect_enh(&mut c, "MAIL FROM:<a@[192.0.2.1>", 501, "5.1.7");
    expect_enh(&mut c, "MAIL FROM:<a@[IPv6:zz::1]>", 501, "5.1.7");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    // Not a local domain: refused, not relayed.
    expect_enh(&mut c, "RCPT TO:<user@[127.0.0.1]>", 550, "5.7.1");
    alive(&mut c);
}

#[test]
fn missing_angle_brackets_are_accepted_by_default() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:sender@remote.example", 250, "2.1.0");
    expect_enh(&mut c, "RCPT TO:user@example.test NOTIFY=FAILURE", 250, "2.1.5");
    c.expect("DATA", 354);
    check(&raw(&mut c, b"hi\r\n.\r\n"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    assert_eq!(todo.mail_from.original, "<sender@remote.example>");
    assert_eq!(todo.rcpt_to[0].original, "<user@example.test>");
}

#[test]
fn missing_angle_brackets_are_refused_when_strict() {
    let srv = start_ini("[main]\nstrict_rfc1869=true\n");
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:sender@remote.example", 501, "5.1.7");
    expect_enh(&mut c, "MAIL FROM: <sender@remote.example>", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<sender@remote.example", 501, "5.1.7");
    no_transaction(&mut c);
    c.expect("MAIL FROM:<sender@remote.example>", 250);
    expect_enh(&mut c, "RCPT TO:user@example.test", 501, "5.1.3");
    c.expect("RCPT TO:<user@example.test>", 250);
    alive(&mut c);
}

#[test]
fn trailing_dot_and_bad_domains_are_refused() {
    let srv = start_ini("[max]\nerrors=0\n");
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example.>", 501, "5.1.7");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    for bad in [
        "<user@example.test.>",
        "<user@example..test>",
        "<user@-example.test>",
        "<user@exa_mple.test>",
        "<user@>",
        "<@example.test>",
        "<us..er@example.test>",
        "<>",
        "<unknown>",
    ] {
        expect_enh(&mut c, &format!("RCPT TO:{bad}"), 501, "5.1.3");
    }
    expect_enh(
        &mut c,
        &format!("RCPT TO:<{}@example.test>", "l".repeat(65)),
        501,
        "5.1.3",
    );
    expect_enh(&mut c, "RCPT TO:<postmaster>", 250, "2.1.5");
    alive(&mut c);
}

#[test]
fn unknown_and_duplicated_parameters() {
    let srv = start_ini("[max]\nerrors=0\n");
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> FOO=bar", 555, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> XYZZY", 555, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=1 SIZE=2", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> body=7BIT BODY=7BIT", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example>SIZE=1", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> =1", 501, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> -X=1", 501, "5.5.4");
    no_transaction(&mut c);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    expect_enh(&mut c, "RCPT TO:<user@example.test> FOO=bar", 555, "5.5.4");
    expect_enh(&mut c, "RCPT TO:<user@example.test> SIZE=1", 555, "5.5.4");
    expect_enh(
        &mut c,
        "RCPT TO:<user@example.test> NOTIFY=NEVER NOTIFY=NEVER",
        501,
        "5.5.4",
    );
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    alive(&mut c);
}

#[test]
fn bad_xtext_in_envid_and_orcpt() {
    let srv = start_ini("[max]\nerrors=0\n");
    let mut c = ehlo(&srv);
    for envid in ["a+zz", "a+2", "a+2b", "a=b", &"x".repeat(101)] {
        expect_enh(
            &mut c,
            &format!("MAIL FROM:<a@remote.example> ENVID={envid}"),
            501,
            "5.5.4",
        );
    }
    no_transaction(&mut c);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    for orcpt in [
        "rfc822",
        "rfc822;",
        ";u@example.test",
        "rfc822;u+4",
        "rfc822;u+GG",
        "rfc 822;u",
    ] {
        expect_enh(
            &mut c,
            &format!("RCPT TO:<user@example.test> ORCPT={orcpt}"),
            501,
            "5.5.4",
        );
    }
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    alive(&mut c);
}

#[test]
fn body_ret_notify_values_out_of_range() {
    let srv = start_ini("[max]\nerrors=0\n");
    let mut c = ehlo(&srv);
    for p in ["BODY=9BIT", "BODY=", "BODY", "RET=ALL", "RET", "SMTPUTF8=yes"] {
        expect_enh(&mut c, &format!("MAIL FROM:<a@remote.example> {p}"), 501, "5.5.4");
    }
    no_transaction(&mut c);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    for p in [
        "NOTIFY=SOMETIMES",
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=DELAY,NEVER",
        "NOTIFY=SUCCESS,",
        "NOTIFY",
    ] {
        expect_enh(&mut c, &format!("RCPT TO:<user@example.test> {p}"), 501, "5.5.4");
    }
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    alive(&mut c);
}

#[test]
fn parameters_after_helo_are_refused() {
    let srv = start(|_| {});
    let mut c = helo(&srv);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> SIZE=100", 555, "5.5.4");
    expect_enh(&mut c, "MAIL FROM:<a@remote.example> BODY=8BITMIME", 555, "5.5.4");
    no_transaction(&mut c);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    expect_enh(&mut c, "RCPT TO:<user@example.test> NOTIFY=NEVER", 555, "5.5.4");
    c.expect("RCPT TO:<user@example.test>", 250);
    alive(&mut c);
}

#[test]
fn accepted_dsn_parameters_reach_the_queue_file() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect(
        "MAIL FROM:<a@remote.example> RET=hdrs ENVID=QQ+2Bid+3D1 BODY=8BITMIME SIZE=10",
        250,
    );
    c.expect(
        "RCPT TO:<u@example.test> NOTIFY=failure,SUCCESS ORCPT=rfc822;u+40example.test",
        250,
    );
    c.expect("RCPT TO:<v@example.test> NOTIFY=NEVER", 250);
    c.expect("RCPT TO:<w@example.test>", 250);
    c.expect("DATA", 354);
    check(&raw(&mut c, b"hi\r\n.\r\n"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    assert_eq!(extra(&todo, "dsn_ret"), Some(&serde_json::json!("HDRS")));
    assert_eq!(extra(&todo, "dsn_envid"), Some(&serde_json::json!("QQ+2Bid+3D1")));
    assert_eq!(extra(&todo, "body"), Some(&serde_json::json!("8BITMIME")));
    let [u, v, w] = &todo.rcpt_to[..] else {
        panic!("three recipients expected: {todo:?}");
    };
    assert_eq!(
        u.extra.get("dsn_notify"),
        Some(&serde_json::json!(["SUCCESS", "FAILURE"]))
    );
    assert_eq!(
        u.extra.get("dsn_orcpt"),
        Some(&serde_json::json!("rfc822;u+40example.test"))
    );
    assert_eq!(v.extra.get("dsn_notify"), Some(&serde_json::json!(["NEVER"])));
    assert_eq!(v.extra.get("dsn_orcpt"), None);
    assert!(w.extra.is_empty(), "{w:?}");
}

#[test]
fn binarymime_content_is_not_altered() {
    let srv = start_ini("[main]\nbare_eol=reject\n");
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example> BODY=BINARYMIME", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    let mut chunk = b"Content-Transfer-Encoding: binary\r\n\r\na\nb\rc\0".to_vec();
    chunk.extend(std::iter::repeat_n(0xffu8, 1500));
    chunk.extend_from_slice(b"\r\n");
    let mut wire = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    wire.extend_from_slice(&chunk);
    check(&raw(&mut c, &wire), 250, "2.0.0");
    alive(&mut c);
    let (_, msg) = only_message(&srv);
    // RFC 3030 3: binary content may not be changed (no LF/CR rewriting, no line folding).
    let at = msg.windows(6).position(|w| w == b"binary").unwrap_or(0);
    let shown: Vec<u8> = msg[at..].iter().copied().filter(|&b| b != 0xff).collect();
    assert!(
        msg.ends_with(&chunk),
        "BINARYMIME body altered; stored (0xff bytes left out): {:?}, {} '\\r\\n ' folds",
        String::from_utf8_lossy(&shown),
        msg.windows(3).filter(|w| w == b"\r\n ").count()
    );
}

// ----- F. sequencing, limits, BDAT -------------------------------------------------------

#[test]
fn mail_before_helo() {
    let srv = start(|_| {});
    let mut c = srv.client();
    expect_enh(&mut c, "MAIL FROM:<a@remote.example>", 503, "5.5.1");
    expect_enh(&mut c, "RCPT TO:<user@example.test>", 503, "5.5.1");
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    c.expect("HELO client.example", 250);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example>", 250, "2.1.0");
    alive(&mut c);
}

#[test]
fn empty_hello_is_refused() {
    let srv = start(|_| {});
    let mut c = srv.client();
    assert_eq!(c.cmd("EHLO").code, 501);
    assert_eq!(c.cmd("HELO ").code, 501);
    expect_enh(&mut c, "MAIL FROM:<a@remote.example>", 503, "5.5.1");
    alive(&mut c);
}

#[test]
fn commands_out_of_order() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "RCPT TO:<user@example.test>", 503, "5.5.1");
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    expect_enh(&mut c, "MAIL FROM:<b@remote.example>", 503, "5.5.1");
    c.expect("RCPT TO:<user@example.test>", 250);
    expect_enh(&mut c, "DATA now", 501, "5.5.4");
    expect_enh(&mut c, "RSET please", 501, "5.5.4");
    expect_enh(&mut c, "QUIT now", 501, "5.5.4");
    // The transaction survived all of that: it still has sender a@ and one recipient.
    c.expect("DATA", 354);
    check(&raw(&mut c, b"hi\r\n.\r\n"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    assert_eq!(todo.mail_from.original, "<a@remote.example>");
    assert_eq!(todo.rcpt_to.len(), 1);
}

#[test]
fn rset_and_helo_clear_the_transaction() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    expect_enh(&mut c, "RSET", 250, "2.0.0");
    no_transaction(&mut c);
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("EHLO again.example", 250);
    no_transaction(&mut c);
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn pipelined_data_without_valid_recipient() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n");
    check(&next(&mut c), 250, "2.1.0");
    check(&next(&mut c), 550, "5.7.1");
    check(&next(&mut c), 554, "5.5.1");
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn binarymime_requires_bdat() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example> BODY=BINARYMIME", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    check(&raw(&mut c, b"BDAT 4 LAST\r\na\nb\0"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    assert_eq!(extra(&todo, "body"), Some(&serde_json::json!("BINARYMIME")));
}

#[test]
fn bdat_without_mail_skips_the_chunk() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    // If the chunk were read as commands, HELP and VRFY would answer 214 and 252.
    let chunk = b"HELP\r\nVRFY x\r\n";
    let mut wire = format!("BDAT {}\r\n", chunk.len()).into_bytes();
    wire.extend_from_slice(chunk);
    check(&raw(&mut c, &wire), 503, "5.5.1");
    alive(&mut c);
    check(&raw(&mut c, b"BDAT 0 LAST\r\n"), 503, "5.5.1");
    alive(&mut c);
    assert_nothing_queued(&srv);
}

#[test]
fn bdat_without_recipient_skips_the_chunk() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    check(&raw(&mut c, b"BDAT 6 LAST\r\nHELP\r\n"), 503, "5.5.1");
    alive(&mut c);
    // The transaction is still open.
    c.expect("RCPT TO:<user@example.test>", 250);
    check(&raw(&mut c, b"BDAT 3 LAST\r\nabc"), 250, "2.0.0");
    assert!(only_message(&srv).1.ends_with(b"\r\nabc\r\n"));
}

#[test]
fn bdat_then_data_is_refused() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    check(&raw(&mut c, b"BDAT 7\r\nhello\r\n"), 250, "2.0.0");
    expect_enh(&mut c, "DATA", 503, "5.5.1");
    check(&raw(&mut c, b"BDAT 5\r\nworld"), 250, "2.0.0");
    check(&raw(&mut c, b"BDAT 0 LAST\r\n"), 250, "2.0.0");
    alive(&mut c);
    let (_, msg) = only_message(&srv);
    assert!(
        msg.ends_with(b"\r\nhello\r\nworld\r\n"),
        "{:?}",
        String::from_utf8_lossy(&msg)
    );
}

#[test]
fn bdat_size_shorter_than_data() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    // The octets after the counted chunk are commands.
    c.send(b"BDAT 3\r\nabcEXPN x\r\nBDAT 3 LAST\r\ndefRSET\r\n");
    check(&next(&mut c), 250, "2.0.0");
    check(&next(&mut c), 500, "5.5.1");
    check(&next(&mut c), 250, "2.0.0");
    assert_eq!(next(&mut c).text(), "2.0.0 OK");
    no_transaction(&mut c);
    assert!(only_message(&srv).1.ends_with(b"\r\nabcdef\r\n"));
}

#[test]
fn rset_between_bdat_chunks_discards_the_message() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    check(&raw(&mut c, b"BDAT 5\r\nhello"), 250, "2.0.0");
    expect_enh(&mut c, "RSET", 250, "2.0.0");
    check(&raw(&mut c, b"BDAT 6 LAST\r\nHELP\r\n"), 503, "5.5.1");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    check(&raw(&mut c, b"BDAT 5 LAST\r\nworld"), 250, "2.0.0");
    let (_, msg) = only_message(&srv);
    assert!(msg.ends_with(b"\r\nworld\r\n") && !contains(&msg, b"hello"), "{msg:?}");
}

#[test]
fn bdat_with_bad_size() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    for bad in ["BDAT", "BDAT x", "BDAT -1", "BDAT 1.5", "BDAT 5 FIRST", "BDAT 5 LAST x"] {
        expect_enh(&mut c, bad, 501, "5.5.4");
    }
    expect_enh(&mut c, "BDAT 999999999999999999999999", 501, "5.5.4");
    alive(&mut c);
    // The transaction is still usable.
    check(&raw(&mut c, b"BDAT 2 LAST\r\nok"), 250, "2.0.0");
    assert!(only_message(&srv).1.ends_with(b"\r\nok\r\n"));
}

#[test]
fn too_many_recipients() {
    let srv = start_ini("[max]\nrecipients=3\n");
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    for r in ["r1", "r2", "r3"] {
        c.expect(&format!("RCPT TO:<{r}@example.test>"), 250);
    }
    expect_enh(&mut c, "RCPT TO:<r4@example.test>", 452, "4.5.3");
    expect_enh(&mut c, "RCPT TO:<r5@example.test>", 452, "4.5.3");
    c.expect("DATA", 354);
    check(&raw(&mut c, b"hi\r\n.\r\n"), 250, "2.0.0");
    let (todo, _) = only_message(&srv);
    let rcpts: Vec<_> = todo.rcpt_to.iter().map(|r| r.original.as_str()).collect();
    assert_eq!(rcpts, ["<r1@example.test>", "<r2@example.test>", "<r3@example.test>"]);
}

#[test]
fn too_many_errors_closes_with_421() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    for _ in 0..3 {
        expect_enh(&mut c, "EXPN staff", 500, "5.5.1");
        expect_enh(&mut c, "RCPT TO:<user@example.test>", 503, "5.5.1");
        check(&raw(&mut c, b"NOOP\0\r\n"), 500, "5.5.2");
    }
    // The tenth error: its own reply, then 421 and close.
    c.send(b"MAIL FROM:<bad@remote.example.>\r\n");
    check(&next(&mut c), 501, "5.1.7");
    check(&next(&mut c), 421, "4.7.0");
    assert_closed(&mut c);
}

#[test]
fn max_errors_counts_skipped_bdat() {
    let srv = start_ini("[max]\nerrors=2\n");
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "FOO", 500, "5.5.1");
    c.send(b"BDAT 4 LAST\r\nQUIT");
    check(&next(&mut c), 503, "5.5.1");
    check(&next(&mut c), 421, "4.7.0");
    assert_closed(&mut c);
}

#[test]
fn errors_accumulate_across_successful_commands() {
    let srv = start_ini("[max]\nerrors=2\n");
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "FOO", 500, "5.5.1");
    for _ in 0..5 {
        alive(&mut c);
    }
    c.send(b"RCPT TO:<user@example.test>\r\n");
    check(&next(&mut c), 503, "5.5.1");
    check(&next(&mut c), 421, "4.7.0");
    assert_closed(&mut c);
}

#[test]
fn simple_commands() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    expect_enh(&mut c, "RSET", 250, "2.0.0");
    expect_enh(&mut c, "NOOP", 250, "2.0.0");
    expect_enh(&mut c, "NOOP with args is fine", 250, "2.0.0");
    expect_enh(&mut c, "VRFY user@example.test", 252, "2.1.5");
    expect_enh(&mut c, "vrfy", 252, "2.1.5");
    expect_enh(&mut c, "HELP", 214, "2.0.0");
    expect_enh(&mut c, "EXPN staff", 500, "5.5.1");
    expect_enh(&mut c, "", 500, "5.5.1");
    expect_enh(&mut c, "rset", 250, "2.0.0");
    alive(&mut c);
}

#[test]
fn quit_closes_and_ignores_what_follows() {
    let srv = start(|_| {});
    let mut c = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.send(b"QUIT\r\nNOOP\r\n");
    check(&next(&mut c), 221, "2.0.0");
    assert_closed(&mut c);
    assert_nothing_queued(&srv);
}
