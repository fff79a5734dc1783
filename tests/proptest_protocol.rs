//! Property tests for the sans-IO protocol layer and the queue file codec.
//!
//! - the command/path parsers never panic, and every error they return is a well-formed reply;
//! - the DATA and BDAT receivers give the same result however the input is segmented, match a
//!   simple reference model, and never store a line that a later hop would read as
//!   end-of-data;
//! - a `Session` fed random (and semi-valid) traffic in random segments never panics and only
//!   ever writes well-formed reply lines;
//! - a queue file header round-trips through `encode_header` + `decode`.
//!
//! Case counts are kept moderate so that the file runs in a few seconds in debug builds; set
//! `PROPTEST_CASES` to run more.

use std::net::SocketAddr;
use std::sync::Arc;

use posta::hooks::hook::Hook;
use posta::hooks::state::Connection;
use posta::hooks::{HookResult, Outcome};
use posta::protocol::address::{parse_path, PathRules};
use posta::protocol::command::{check_line, parse_bdat, parse_command, parse_mail, parse_rcpt, ParseContext};
use posta::protocol::data::{BodyLimits, BodyReceiver, Fed, Mode};
use posta::protocol::{Action, CommitError, Reply, Session, SessionConfig};
use posta::queue::{decode, encode_header, Todo, TodoAddress};
use proptest::prelude::*;
use serde_json::{Map, Value};

// ----- helpers --------------------------------------------------------------------------------

/// Every reply line: `^[2-5][0-9][0-9][ -]`, CRLF-terminated, at most 512 octets with its CRLF,
/// and no bare CR or LF inside. Returns the lines (without CRLF) for further checks.
fn check_reply_wire(out: &[u8]) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let mut lines = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| TestCaseError::fail(format!("reply output not CRLF-terminated: {:?}", lossy(rest))))?;
        let line = &rest[..end];
        prop_assert!(end + 2 <= 512, "reply line of {} octets: {:?}", end + 2, lossy(line));
        prop_assert!(
            line.len() >= 4
                && (b'2'..=b'5').contains(&line[0])
                && line[1].is_ascii_digit()
                && line[2].is_ascii_digit()
                && (line[3] == b' ' || line[3] == b'-'),
            "bad reply line {:?}",
            lossy(line)
        );
        prop_assert!(
            !line.contains(&b'\r') && !line.contains(&b'\n'),
            "bare CR/LF inside reply line {:?}",
            lossy(line)
        );
        lines.push(line.to_vec());
        rest = &rest[end + 2..];
    }
    Ok(lines)
}

fn check_reply(r: &Reply) -> Result<(), TestCaseError> {
    prop_assert!((400..=599).contains(&r.code), "error reply with code {}", r.code);
    let mut v = Vec::new();
    r.write_to(&mut v);
    let lines = check_reply_wire(&v)?;
    prop_assert!(!lines.is_empty());
    // Continuation marks: '-' on all lines but the last.
    for (i, l) in lines.iter().enumerate() {
        let want = if i + 1 == lines.len() { b' ' } else { b'-' };
        prop_assert_eq!(l[3], want);
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Split `input` at the given cut points (sorted, deduplicated, clamped).
fn segments<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| if input.is_empty() { 0 } else { c % (input.len() + 1) })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(&input[at..c]);
        at = c;
    }
    out.push(&input[at..]);
    out
}

/// Bytes that exercise the line and dot logic, with the odd arbitrary byte.
fn body_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => Just(b'.'),
        4 => Just(b'\r'),
        4 => Just(b'\n'),
        4 => prop::sample::select(b"abcXYZ :".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..max)
}

/// Byte strings made of pieces that matter to DATA: line endings, dots, terminators.
fn data_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => body_bytes(6),
        2 => prop::sample::select(vec![
            &b"\r\n.\r\n"[..],
            b".\r\n",
            b"\r\n",
            b"\n.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"..",
            b"Received: x\r\n",
            b"\r\n\r\n",
        ])
        .prop_map(|s| s.to_vec()),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

const NO_LIMITS: BodyLimits = BodyLimits {
    max_bytes: 0,
    max_line: 0,
};

/// Result of feeding one input: output, total consumed, done, and the receiver's flags.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    bare_eol: bool,
    folded: bool,
    received: usize,
    bytes: u64,
}

fn run_segments(mode: Mode, limits: BodyLimits, segs: &[&[u8]], finish: bool) -> Run {
    let mut r = BodyReceiver::new(mode, limits);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut done = false;
    for s in segs {
        let Fed { consumed: c, done: d } = r.feed(s, &mut out);
        assert!(c <= s.len(), "consumed {c} of a {}-byte segment", s.len());
        consumed += c;
        if d {
            done = true;
            break;
        }
        // Without end-of-data every byte of the segment is used.
        assert_eq!(c, s.len(), "a feed that did not end data left input unused");
    }
    if finish {
        r.finish(&mut out);
    }
    Run {
        out,
        consumed,
        done,
        bare_eol: r.bare_eol(),
        folded: r.folded(),
        received: r.received_headers(),
        bytes: r.bytes(),
    }
}

/// Split into lines as (content, ending) with endings CRLF, bare CR or bare LF. A CR followed
/// by LF is one CRLF ending; a CR followed by anything else is a bare CR; a CR at the very end
/// is still pending (a streaming receiver cannot know yet). The last element has ending `None`
/// when the input does not end with a complete line ending.
fn lines_model(input: &[u8]) -> Vec<(Vec<u8>, Option<&'static [u8]>)> {
    let mut v = Vec::new();
    let mut cur = Vec::new();
    let mut pending_cr = false;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if i + 1 == input.len() => pending_cr = true,
            b'\r' if input[i + 1] == b'\n' => {
                v.push((std::mem::take(&mut cur), Some(&b"\r\n"[..])));
                i += 1;
            }
            b'\r' => v.push((std::mem::take(&mut cur), Some(&b"\r"[..]))),
            b'\n' => v.push((std::mem::take(&mut cur), Some(&b"\n"[..]))),
            c => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() || pending_cr {
        v.push((cur, None));
    }
    v
}

/// Reference model of DATA with no limits.
struct DataModel {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    /// RFC 1870 size: raw octets before the terminator, less the stuffing dots removed.
    bytes: u64,
}

fn data_model(input: &[u8]) -> DataModel {
    let mut out = Vec::new();
    let mut prev_crlf = true;
    let mut pos = 0;
    let mut stuffing = 0;
    for (line, end) in lines_model(input) {
        // A leading dot followed by more text on the line is the stuffing dot.
        if line.len() > 1 && line[0] == b'.' {
            stuffing += 1;
        }
        match end {
            // Pending: content streams out, except a line that so far is a lone dot.
            None if line == b"." => {}
            None => out.extend_from_slice(&line),
            Some(e) => {
                pos += line.len() + e.len();
                let crlf = e == b"\r\n";
                if line == b"." {
                    if crlf && prev_crlf {
                        let bytes = (pos - 3 - stuffing) as u64;
                        return DataModel {
                            out,
                            consumed: pos,
                            done: true,
                            bytes,
                        };
                    }
                    out.extend_from_slice(b"..");
                } else {
                    out.extend_from_slice(&line);
                }
                out.extend_from_slice(b"\r\n");
                prev_crlf = crlf;
            }
        }
    }
    let bytes = (input.len() - stuffing) as u64;
    DataModel {
        out,
        consumed: input.len(),
        done: false,
        bytes,
    }
}

/// Reference model of BDAT (all chunks, then `finish`) with no limits.
fn bdat_model(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::new();
    let mut open = false;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                lines.push(std::mem::take(&mut cur));
                open = false;
                i += 2;
                continue;
            }
            b'\r' | b'\n' => {
                lines.push(std::mem::take(&mut cur));
                open = false;
            }
            c => {
                cur.push(c);
                open = true;
            }
        }
        i += 1;
    }
    if open {
        lines.push(cur);
    }
    for l in lines {
        if l.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(&l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The stored form must never hold a line that is exactly ".".
fn no_lone_dot_line(out: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        !out.starts_with(b".\r\n"),
        "stored form starts with a lone dot: {:?}",
        lossy(out)
    );
    prop_assert!(
        !out.windows(5).any(|w| w == b"\r\n.\r\n"),
        "stored form holds a lone dot line: {:?}",
        lossy(out)
    );
    Ok(())
}

/// Every CR in the stored form is followed by LF and every LF follows a CR.
fn only_crlf(out: &[u8]) -> Result<(), TestCaseError> {
    for (i, &b) in out.iter().enumerate() {
        if b == b'\r' {
            prop_assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {} in {:?}", i, lossy(out));
        }
        if b == b'\n' {
            prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {} in {:?}", i, lossy(out));
        }
    }
    Ok(())
}

// ----- (a) parsers never panic ----------------------------------------------------------------

fn parse_context() -> impl Strategy<Value = ParseContext> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0u64), Just(1000), any::<u64>()],
    )
        .prop_map(|(esmtp, strict, smtputf8_offered, utf8_txn, max_bytes)| ParseContext {
            esmtp,
            strict,
            smtputf8_offered,
            utf8_txn,
            max_bytes,
        })
}

fn path_rules() -> impl Strategy<Value = PathRules> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(utf8, strict, rcpt)| PathRules { utf8, strict, rcpt })
}

/// Text that looks like MAIL/RCPT arguments: keywords, brackets, quotes, params, UTF-8.
fn smtpish_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[ -~]{0,8}",
        1 => "\\PC{0,4}",
        2 => prop::sample::select(vec![
            "FROM:", "TO:", "from:", "<", ">", "<>", "\"", "\\", "@", ":", ",", ".", " ", "=", "+2B", "+",
            "a@b.c", "user@[127.0.0.1]", "user@[IPv6:::1]", "@relay.example:", "postmaster", "jö", "é.org",
            " SIZE=", " BODY=8BITMIME", " BODY=BINARYMIME", " SMTPUTF8", " RET=HDRS", " ENVID=x+41",
            " NOTIFY=SUCCESS,FAILURE", " NOTIFY=NEVER", " ORCPT=rfc822;a+40b", " ORCPT=utf-8;jö@x",
            "99999999999999999999999", "0", "-", "[", "]",
        ])
        .prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn check_line_and_parse_command_never_panic(line in prop::collection::vec(any::<u8>(), 0..200), utf8 in any::<bool>()) {
        match check_line(&line, utf8) {
            Ok(text) => {
                prop_assert!(!text.contains('\0') && !text.contains('\r'));
                prop_assert!(utf8 || text.is_ascii());
                let cmd = parse_command(text);
                prop_assert!(!cmd.verb().is_empty());
            }
            Err(e) => check_reply(&e.reply())?,
        }
    }

    #[test]
    fn parse_command_never_panics_on_strings(s in "\\PC{0,40}|(?i:(ehlo|helo|mail|rcpt|data|bdat|rset|noop|quit|vrfy|help)( {0,3}[ -~]{0,20})?)") {
        let cmd = parse_command(&s);
        if let posta::protocol::command::Command::Bdat(a) = cmd {
            let _ = parse_bdat(a);
        }
    }

    #[test]
    fn parse_bdat_never_panics(s in "[0-9 LASTlast]{0,30}|\\PC{0,30}") {
        if let Some((_, _)) = parse_bdat(&s) {
            prop_assert!(s.split(' ').filter(|w| !w.is_empty()).count() <= 2);
        }
    }

    #[test]
    fn parse_mail_rcpt_never_panic(args in smtpish_text(), cx in parse_context()) {
        match parse_mail(&args, cx) {
            Ok((m, p)) => {
                if let Some(m) = m {
                    prop_assert!(!m.local.is_empty());
                    prop_assert!(p.smtputf8 || !m.is_utf8(), "non-ASCII sender without SMTPUTF8: {m}");
                }
                prop_assert!(cx.esmtp || p == Default::default());
            }
            Err(r) => check_reply(&r)?,
        }
        match parse_rcpt(&args, cx) {
            Ok((m, _)) => {
                prop_assert!(!m.local.is_empty());
                prop_assert!(cx.utf8_txn || !m.is_utf8(), "non-ASCII recipient without SMTPUTF8: {m}");
            }
            Err(r) => check_reply(&r)?,
        }
        // The same with the keyword in front, so the path and parameter code is reached.
        let _ = parse_mail(&format!("FROM:{args}"), cx).map_err(|r| check_reply(&r)).err().transpose()?;
        let _ = parse_rcpt(&format!("TO:{args}"), cx).map_err(|r| check_reply(&r)).err().transpose()?;
    }

    #[test]
    fn parse_path_never_panics(raw in smtpish_text(), bytes in prop::collection::vec(any::<u8>(), 0..80), rules in path_rules()) {
        for s in [raw, String::from_utf8_lossy(&bytes).into_owned()] {
            if let Ok(Some(m)) = parse_path(&s, rules) {
                // What ends up in the envelope has no control characters or spaces outside quotes.
                prop_assert!(!m.to_string().chars().any(char::is_control));
                prop_assert!(m.local.starts_with('"') || !m.local.contains(' '));
                prop_assert!(!m.domain.contains(' '));
                prop_assert!(m.local.len() <= 64 && m.domain.len() <= 255);
                prop_assert!(rules.utf8 || !m.is_utf8());
                // The canonical form parses back to the same mailbox.
                if !m.domain.is_empty() {
                    prop_assert_eq!(parse_path(&format!("<{m}>"), rules), Ok(Some(m.clone())));
                }
            }
        }
    }

    #[test]
    fn valid_paths_parse(local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-zA-Z0-9_-]{1,8}){0,2}",
                         domain in "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}",
                         rules in path_rules()) {
        let m = parse_path(&format!("<{local}@{domain}>"), rules).unwrap().unwrap();
        prop_assert_eq!(&m.local, &local);
        prop_assert_eq!(&m.domain, &domain);
        prop_assert_eq!(m.host(), domain.to_ascii_lowercase());
    }
}

// ----- (b) DATA receiver ----------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random input, random segmentation: same output and flags as one feed, consumed adds up,
    /// the stored form is CRLF only and never holds a lone-dot line, and it matches the model.
    #[test]
    fn data_segmentation_invariant(input in data_input(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = run_segments(Mode::Data, NO_LIMITS, &[&input], false);
        let segs = segments(&input, &cuts);
        let split = run_segments(Mode::Data, NO_LIMITS, &segs, false);
        prop_assert_eq!(&split.out, &whole.out, "output differs by segmentation {:?}", segs);
        prop_assert_eq!(split.consumed, whole.consumed);
        prop_assert_eq!(split.done, whole.done);
        prop_assert_eq!(split.bare_eol, whole.bare_eol);
        prop_assert_eq!(split.received, whole.received);
        // `bytes()` (what max.bytes is checked against) is not compared here: it depends on
        // where the terminator is split (see `data_bytes_count_depends_on_segmentation`).
        no_lone_dot_line(&whole.out)?;
        if whole.done {
            only_crlf(&whole.out)?;
            prop_assert!(whole.out.is_empty() || whole.out.ends_with(b"\r\n"));
        }
        let m = data_model(&input);
        prop_assert_eq!(lossy(&whole.out), lossy(&m.out), "differs from the model");
        prop_assert_eq!(whole.consumed, m.consumed);
        prop_assert_eq!(whole.done, m.done);
        prop_assert_eq!(whole.bytes, m.bytes, "size (RFC 1870, stuffing excluded) differs from the model");
    }

    /// Same with folding enabled: segmentation invariance and no lone-dot line.
    #[test]
    fn data_folding_segmentation_invariant(input in data_input(), cuts in prop::collection::vec(any::<usize>(), 0..8),
                                           max_line in 4usize..12) {
        let lim = BodyLimits { max_bytes: 0, max_line };
        let whole = run_segments(Mode::Data, lim, &[&input], false);
        let segs = segments(&input, &cuts);
        let split = run_segments(Mode::Data, lim, &segs, false);
        prop_assert_eq!(&split.out, &whole.out);
        prop_assert_eq!(split.consumed, whole.consumed);
        prop_assert_eq!(split.folded, whole.folded);
        no_lone_dot_line(&whole.out)?;
        if whole.done {
            only_crlf(&whole.out)?;
        }
    }

    /// Well-formed input (CRLF lines, dot-stuffed, terminated): output is the input without the
    /// terminator, consumed stops right after it, no flags are raised.
    #[test]
    fn data_well_formed(lines in prop::collection::vec("[ -~]{0,20}", 0..30),
                        trailer in prop::sample::select(vec!["", "QUIT\r\n", "MAIL FROM:<a@b>\r\n", ".\r\n"]),
                        cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let mut body = Vec::new();
        for l in &lines {
            if l.starts_with('.') {
                body.push(b'.');
            }
            body.extend_from_slice(l.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        let mut input = body.clone();
        input.extend_from_slice(b".\r\n");
        let end = input.len();
        input.extend_from_slice(trailer.as_bytes());
        let segs = segments(&input, &cuts);
        let r = run_segments(Mode::Data, NO_LIMITS, &segs, false);
        prop_assert!(r.done);
        prop_assert_eq!(r.consumed, end);
        prop_assert_eq!(lossy(&r.out), lossy(&body));
        prop_assert!(!r.bare_eol);
        // The size of the message (RFC 1870) is the body without the terminator line and
        // without the stuffing dots.
        let stuffed = lines.iter().filter(|l| l.starts_with('.')).count();
        prop_assert_eq!(run_segments(Mode::Data, NO_LIMITS, &[&input], false).bytes, (body.len() - stuffed) as u64);
    }

    /// A DATA body always ends at the first `<CRLF>.<CRLF>` that follows a CRLF line ending.
    #[test]
    fn data_ends_at_first_terminator(prefix in data_input(), rest in data_input()) {
        // Make the prefix end with a real CRLF and contain no lone-dot line of its own.
        let mut input = prefix.clone();
        input.extend_from_slice(b"\r\n.\r\n");
        input.extend_from_slice(&rest);
        let m = data_model(&input);
        let r = run_segments(Mode::Data, NO_LIMITS, &[&input], false);
        prop_assert!(r.done && m.done);
        prop_assert_eq!(r.consumed, m.consumed);
        prop_assert!(r.consumed <= prefix.len() + 5);
    }
}

/// `BodyReceiver::bytes()` counts the raw message size (the terminator excluded) for
/// `max.bytes` and `transaction.data_bytes`. When `.\r\n` is split across two feeds, the part
/// in the first feed is counted as message data and the `saturating_sub(3)` in the second feed
/// cannot take it back, so the size depends on TCP segmentation (off by 1 or 2 octets).
#[test]
fn data_bytes_count_depends_on_segmentation() {
    let input: &[u8] = b"abc\r\n.\r\n";
    let whole = run_segments(Mode::Data, NO_LIMITS, &[input], false);
    assert_eq!(whole.bytes, 5);
    for cut in 0..=input.len() {
        let split = run_segments(Mode::Data, NO_LIMITS, &[&input[..cut], &input[cut..]], false);
        assert_eq!(split.out, whole.out);
        assert_eq!(split.bytes, whole.bytes, "bytes() with the input cut at {cut}");
    }
}

// ----- (c) BDAT receiver ----------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn bdat_segmentation_invariant(input in data_input(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = run_segments(Mode::Bdat, NO_LIMITS, &[&input], true);
        let segs = segments(&input, &cuts);
        let split = run_segments(Mode::Bdat, NO_LIMITS, &segs, true);
        prop_assert!(!whole.done && !split.done, "BDAT never ends by itself");
        prop_assert_eq!(whole.consumed, input.len());
        prop_assert_eq!(split.consumed, input.len());
        prop_assert_eq!(&split.out, &whole.out);
        prop_assert_eq!(split.bare_eol, whole.bare_eol);
        prop_assert_eq!(split.received, whole.received);
        prop_assert_eq!(split.bytes, input.len() as u64);
        prop_assert_eq!(whole.bytes, input.len() as u64);
        only_crlf(&whole.out)?;
        no_lone_dot_line(&whole.out)?;
        prop_assert!(whole.out.is_empty() || whole.out.ends_with(b"\r\n"));
        // Every line that starts with a dot is stuffed.
        for line in whole.out.split(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                prop_assert!(line.starts_with(b".."), "unstuffed line {:?}", lossy(line));
            }
        }
        prop_assert_eq!(lossy(&whole.out), lossy(&bdat_model(&input)), "differs from the model");
    }

    #[test]
    fn bdat_folding_segmentation_invariant(input in data_input(), cuts in prop::collection::vec(any::<usize>(), 0..8),
                                           max_line in 4usize..12) {
        let lim = BodyLimits { max_bytes: 0, max_line };
        let whole = run_segments(Mode::Bdat, lim, &[&input], true);
        let segs = segments(&input, &cuts);
        let split = run_segments(Mode::Bdat, lim, &segs, true);
        prop_assert_eq!(&split.out, &whole.out);
        prop_assert_eq!(split.folded, whole.folded);
        only_crlf(&whole.out)?;
        no_lone_dot_line(&whole.out)?;
    }

    /// BINARYMIME: octets kept as they are, only a `.` at the start or right after CRLF doubled;
    /// segmentation does not matter.
    #[test]
    fn binary_segmentation_invariant(input in data_input(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = run_segments(Mode::Binary, NO_LIMITS, &[&input], true);
        let segs = segments(&input, &cuts);
        let split = run_segments(Mode::Binary, NO_LIMITS, &segs, true);
        prop_assert_eq!(&split.out, &whole.out);
        prop_assert_eq!(split.consumed, input.len());
        prop_assert_eq!(whole.bytes, input.len() as u64);
        prop_assert_eq!(split.bytes, input.len() as u64);
        no_lone_dot_line(&whole.out)?;
        let mut model = Vec::new();
        for (i, &b) in input.iter().enumerate() {
            if b == b'.' && (i == 0 || (i >= 2 && &input[i - 2..i] == b"\r\n")) {
                model.push(b'.');
            }
            model.push(b);
        }
        prop_assert_eq!(lossy(&whole.out), lossy(&model), "differs from the model");
    }

    /// CRLF text without dots at line starts comes out unchanged (plus a final CRLF).
    #[test]
    fn bdat_plain_text_unchanged(lines in prop::collection::vec("([!-\\-/-~][ -~]{0,20})?", 0..20)) {
        let mut input = Vec::new();
        for l in &lines {
            input.extend_from_slice(l.as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        let r = run_segments(Mode::Bdat, NO_LIMITS, &[&input], true);
        prop_assert_eq!(lossy(&r.out), lossy(&input));
        prop_assert!(!r.bare_eol);
    }
}

// ----- (d) Session ----------------------------------------------------------------------------

fn session_cfg() -> Arc<SessionConfig> {
    let mut c = SessionConfig::defaults("mx.example.test");
    c.max_bytes = 4096;
    c.max_recipients = 5;
    c.line_length = 128;
    c.data_line_length = 64;
    Arc::new(c)
}

fn new_session() -> Session {
    let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
    Session::new(session_cfg(), Connection::new(remote, local))
}

/// Traffic that is mostly SMTP, with random bytes mixed in.
fn smtp_traffic() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        6 => prop::sample::select(vec![
            &b"EHLO client.example\r\n"[..],
            b"HELO client.example\r\n",
            b"EHLO\r\n",
            b"MAIL FROM:<a@remote.example>\r\n",
            b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
            b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\n",
            b"MAIL FROM:<j\xc3\xb6@b.c> SMTPUTF8\r\n",
            b"MAIL FROM:<a@b.c> SIZE=99999999\r\n",
            b"RCPT TO:<user@example.test>\r\n",
            b"RCPT TO:<postmaster>\r\n",
            b"RCPT TO:<x@y.z> NOTIFY=SUCCESS ORCPT=rfc822;x+40y.z\r\n",
            b"DATA\r\n",
            b"Subject: x\r\n\r\nbody\r\n",
            b".\r\n",
            b"..\r\n",
            b"\r\n.\r\n",
            b"BDAT 5\r\n",
            b"BDAT 0 LAST\r\n",
            b"BDAT 3 LAST\r\n",
            b"BDAT x\r\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"VRFY x\r\n",
            b"HELP\r\n",
            b"EXPN x\r\n",
            b"QUIT\r\n",
            b"\x16\x03\x01",
            b"\0",
        ])
        .prop_map(|s| s.to_vec()),
        2 => body_bytes(12),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn outcome() -> impl Strategy<Value = HookResult> {
    let o = prop::sample::select(vec![
        Outcome::Cont,
        Outcome::Cont,
        Outcome::Cont,
        Outcome::Ok,
        Outcome::Stop,
        Outcome::Deny,
        Outcome::DenySoft,
        Outcome::DenyDisconnect,
        Outcome::DenySoftDisconnect,
        Outcome::Disconnect,
        Outcome::NextHook,
        Outcome::Delay,
    ]);
    let msg = prop_oneof![
        3 => Just(None),
        1 => "\\PC{0,20}".prop_map(Some),
        1 => "[ -~\r\n]{0,700}".prop_map(Some),
    ];
    (o, msg).prop_map(|(outcome, msg)| HookResult { outcome, msg })
}

/// How the driver answers hooks and commits.
enum Answers {
    /// CONT everywhere, OK for `rcpt` (so transactions reach DATA), commits succeed.
    Accepting,
    /// Scripted outcomes, used in order and repeated; commits fail every third time.
    Scripted(Vec<HookResult>),
}

/// Drive a session like the Connection actor does. Returns the output.
fn drive(segs: &[&[u8]], answers: &Answers) -> Result<Vec<u8>, TestCaseError> {
    let mut s = new_session();
    let mut out = Vec::new();
    let mut next_seg = 0;
    let mut closed_by_peer = false;
    let mut n_hook = 0usize;
    let mut n_commit = 0usize;
    let mut closed = false;
    for _ in 0..100_000 {
        match s.next_action() {
            Action::Hook(h) => {
                let r = match answers {
                    Answers::Accepting => match h {
                        Hook::Rcpt(_) => HookResult::new(Outcome::Ok),
                        _ => HookResult::CONT,
                    },
                    Answers::Scripted(v) if v.is_empty() => HookResult::CONT,
                    Answers::Scripted(v) => v[n_hook % v.len()].clone(),
                };
                n_hook += 1;
                s.hook_done(r);
            }
            Action::Commit => {
                n_commit += 1;
                let r = match answers {
                    Answers::Scripted(_) if n_commit.is_multiple_of(3) => Err(CommitError::Temporary("test".into())),
                    Answers::Scripted(_) if n_commit.is_multiple_of(5) => Err(CommitError::DiskFull),
                    _ => Ok(format!("q{n_commit}")),
                };
                s.commit_done(r);
            }
            Action::Body(_) | Action::Discard | Action::Pause(_) => {}
            Action::NeedInput => {
                out.extend_from_slice(&s.take_output());
                if next_seg < segs.len() {
                    s.receive(segs[next_seg]);
                    next_seg += 1;
                } else if !closed_by_peer {
                    closed_by_peer = true;
                    s.peer_closed();
                } else {
                    return Err(TestCaseError::fail("session asks for input after peer_closed"));
                }
            }
            Action::StartTls { .. } => s.peer_closed(),
            Action::Close => {
                closed = true;
                break;
            }
        }
    }
    prop_assert!(closed, "session did not close within the iteration bound");
    out.extend_from_slice(&s.take_output());
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn session_random_bytes(input in prop::collection::vec(any::<u8>(), 0..600),
                            cuts in prop::collection::vec(any::<usize>(), 0..10)) {
        let out = drive(&segments(&input, &cuts), &Answers::Accepting)?;
        let lines = check_reply_wire(&out)?;
        prop_assert!(lines.first().is_some_and(|l| l.starts_with(b"220")), "no greeting: {:?}", lossy(&out));
    }

    #[test]
    fn session_smtp_traffic(input in smtp_traffic(), cuts in prop::collection::vec(any::<usize>(), 0..16)) {
        // A line starting with 0x16 0x03 (TLS ClientHello) is answered differently depending
        // on segmentation (see `tls_client_hello_reply_depends_on_segmentation`); keep those
        // bytes out of the comparison below.
        let input: Vec<u8> = input.into_iter().map(|b| if b == 0x16 { 0x17 } else { b }).collect();
        let segs = segments(&input, &cuts);
        let out = drive(&segs, &Answers::Accepting)?;
        check_reply_wire(&out)?;
        // Segmentation does not change what the server answers (apart from the banner id and
        // queue ids, which contain the random connection uuid).
        let whole = drive(&[&input], &Answers::Accepting)?;
        prop_assert_eq!(codes(&out), codes(&whole), "replies depend on segmentation");
    }

    #[test]
    fn session_random_hook_outcomes(input in smtp_traffic(), cuts in prop::collection::vec(any::<usize>(), 0..16),
                                    script in prop::collection::vec(outcome(), 0..12)) {
        let out = drive(&segments(&input, &cuts), &Answers::Scripted(script))?;
        check_reply_wire(&out)?;
    }
}

/// A TLS ClientHello sent to the plain-text port must get `501 5.5.1 SSL attempted over a
/// non-SSL socket` (the session checks for it even without a line ending). When the whole
/// ClientHello arrives in one read and is at least `max.line_length` (512) octets long, as
/// modern ClientHellos usually are (517 octets and more), the line-length check runs first and
/// the client gets `521 5.5.2 Command line too long` instead; sent in two smaller reads it gets
/// the 501. Both close the connection.
#[test]
fn tls_client_hello_reply_depends_on_segmentation() {
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    hello.resize(517, 0x2a);
    let cfg = Arc::new(SessionConfig::defaults("mx.example.test"));
    let run = |segs: &[&[u8]]| {
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut s = Session::new(cfg.clone(), Connection::new(remote, remote));
        let mut out = Vec::new();
        let mut next = 0;
        for _ in 0..1000 {
            match s.next_action() {
                Action::Hook(_) => s.hook_done(HookResult::CONT),
                Action::Commit => s.commit_done(Ok("q".into())),
                Action::NeedInput if next < segs.len() => {
                    s.receive(segs[next]);
                    next += 1;
                }
                Action::NeedInput => s.peer_closed(),
                Action::Close => break,
                _ => {}
            }
        }
        out.extend_from_slice(&s.take_output());
        codes(&out)
    };
    let split = run(&[&hello[..100], &hello[100..]]);
    let whole = run(&[&hello]);
    assert_eq!(split, ["220 ", "501 "]);
    assert_eq!(whole, split, "ClientHello in one read");
}

/// The reply codes of an output, in order.
fn codes(out: &[u8]) -> Vec<String> {
    out.split(|&b| b == b'\n')
        .filter(|l| l.len() >= 4)
        .map(|l| lossy(&l[..4]))
        .collect()
}

// ----- (e) queue file -------------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[\u{0}-\u{1f}\"\\\\]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,6}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An extra map whose keys cannot collide with the named fields of the struct it flattens into.
fn extra_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(("x_[a-z_]{0,8}", json_value()), 0..3).prop_map(|kv| kv.into_iter().collect())
}

fn todo_address() -> impl Strategy<Value = TodoAddress> {
    (
        "\\PC{0,20}",
        prop::option::of("\\PC{0,12}"),
        prop::option::of("[a-z0-9.-]{0,12}"),
        prop::option::of("\\PC{0,10}"),
        extra_map(),
    )
        .prop_map(|(original, original_host, host, user, extra)| TodoAddress {
            original,
            original_host,
            host,
            user,
            extra,
        })
}

fn todo() -> impl Strategy<Value = Todo> {
    (
        any::<u64>(),
        "\\PC{0,20}",
        prop::collection::vec(todo_address(), 0..4),
        todo_address(),
        prop::collection::vec(("\\PC{0,8}", json_value()), 0..4),
        "[A-F0-9-]{0,36}(\\.[0-9]{1,3})?",
        any::<bool>(),
        extra_map(),
    )
        .prop_map(
            |(queue_time, domain, rcpt_to, mail_from, notes, uuid, force_tls, extra)| Todo {
                queue_time,
                domain,
                rcpt_to,
                mail_from,
                notes: notes.into_iter().collect(),
                uuid,
                force_tls,
                extra,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn queue_file_round_trip(t in todo(), msg in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut file = encode_header(&t);
        let header_len = u32::from_be_bytes(file[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(header_len + 4, file.len());
        prop_assert_eq!(&file[4..6], b"\n{");
        prop_assert_eq!(file.last(), Some(&b'\n'));
        file.extend_from_slice(&msg);
        let (back, body) = decode(&file).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(back, t);
        prop_assert_eq!(body, &msg[..]);
    }

    #[test]
    fn queue_file_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes);
    }
}
