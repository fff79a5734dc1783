//! Message body receivers for DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030).
//!
//! Both produce the *stored form* of a message: CRLF line endings, dot-stuffed as on the wire
//! (the form Haraka keeps in its queue files, so a queue file can be sent with DATA as it is).
//!
//! The rules that keep this safe against SMTP smuggling:
//! - Only `<CRLF>.<CRLF>` ends DATA. Bare LF and bare CR never end a message.
//! - A bare LF or bare CR is turned into CRLF (policy `normalize`) and remembered, so the
//!   session can refuse the message instead (policy `reject`).
//! - A line that is a lone `.` ended by a bare LF/CR is stored as `..`, so the stored form never
//!   contains a line that a later hop would read as end-of-data.
//! - BDAT content is dot-stuffed on the way in.

use memchr::memchr2;

/// Which command the body arrives with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// DATA: dot-stuffed text ending at `<CRLF>.<CRLF>`.
    Data,
    /// BDAT: counted chunks of raw octets, stuffed here.
    Bdat,
    /// BDAT with `BODY=BINARYMIME` (RFC 3030 3): octets are kept as they are (no line-ending
    /// changes, no folding); only a `.` right after CRLF is doubled, which is reversible.
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line (or at its start).
    Cr,
    /// DATA: a line that so far is a single `.`.
    Dot,
    /// DATA: a line that so far is `.` CR.
    DotCr,
}

/// Limits for one body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `max.bytes`: raw octets accepted before the rest is drained and discarded; 0 = no limit.
    pub max_bytes: u64,
    /// `max.data_line_length`: longer lines are folded with CRLF SP (as Haraka and Sendmail
    /// do); 0 = never fold.
    pub max_line: usize,
}

/// What one call to [`BodyReceiver::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used. For DATA this stops right after the end-of-data line.
    pub consumed: usize,
    /// End of data was seen (DATA only).
    pub done: bool,
}

/// A streaming body receiver. Memory use does not depend on the message size: the caller owns
/// the output buffer and drains it after each call.
#[derive(Debug, Clone)]
pub struct BodyReceiver {
    mode: Mode,
    st: St,
    line_len: usize,
    limits: BodyLimits,
    bytes: u64,
    too_big: bool,
    bare_eol: bool,
    folded: bool,
    /// The previous line ended with a real CRLF (or this is the first line): only then can
    /// a `.` line end DATA. This is what refuses `<LF>.<CRLF>` and `<CR>.<CRLF>`.
    prev_crlf: bool,
    /// Leading dots removed by the DATA unstuffing rule; RFC 1870 counts without them.
    stuffing: u64,
    /// Raw octets consumed (minus the end-of-data line once seen).
    raw: u64,
    headers: HeaderScan,
}

impl BodyReceiver {
    pub fn new(mode: Mode, limits: BodyLimits) -> Self {
        BodyReceiver {
            mode,
            st: St::LineStart,
            line_len: 0,
            limits,
            bytes: 0,
            too_big: false,
            bare_eol: false,
            folded: false,
            prev_crlf: true,
            stuffing: 0,
            raw: 0,
            headers: HeaderScan::default(),
        }
    }

    /// Raw octets received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// The message went over `max.bytes`; its output was discarded from that point on.
    pub fn too_big(&self) -> bool {
        self.too_big
    }
    /// A bare LF or bare CR was seen (and normalised).
    pub fn bare_eol(&self) -> bool {
        self.bare_eol
    }
    /// A line was longer than `max.data_line_length` and was folded.
    pub fn folded(&self) -> bool {
        self.folded
    }
    /// `Received:` header lines seen in the header section.
    pub fn received_headers(&self) -> usize {
        self.headers.received
    }

    /// Update the size (RFC 1870: without stuffing dots and end-of-data) and the limit check.
    /// A `.` or `.CR` at the start of a line may still turn out to be the end of data, so it
    /// is not counted until that is known: the count does not depend on segmentation.
    fn count(&mut self) {
        self.bytes = self.raw.saturating_sub(self.stuffing);
        let pending = match self.st {
            St::Dot if self.prev_crlf => 1,
            St::DotCr if self.prev_crlf => 2,
            _ => 0,
        };
        if self.limits.max_bytes > 0 && self.bytes.saturating_sub(pending) > self.limits.max_bytes {
            self.too_big = true;
        }
    }

    /// Feed input; append the stored form to `out` (nothing once the message is too big).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let start = out.len();
        let mut i = 0;
        let mut done = false;
        while i < input.len() {
            if self.st == St::Mid {
                i += self.run(&input[i..], out);
                continue;
            }
            let c = input[i];
            i += 1;
            if self.mode == Mode::Binary {
                self.step_binary(c, out);
            } else if self.step(c, out) {
                done = true;
                break;
            }
        }
        let consumed = i;
        self.raw = self.raw.saturating_add(consumed as u64);
        if done {
            self.raw = self.raw.saturating_sub(3); // the `.CRLF` of `<CRLF>.<CRLF>`
        }
        self.count();
        self.headers.scan(&out[start..]);
        if self.too_big {
            out.truncate(start);
        }
        Fed { consumed, done }
    }

    /// BDAT LAST: close an unterminated last line so the stored form ends with CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        match self.st {
            _ if self.mode == Mode::Binary => {}
            St::LineStart => {}
            St::Cr => {
                self.bare_eol = true;
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(b"\r\n"),
        }
        self.st = St::LineStart;
        self.headers.scan(&out[start..]);
        if self.too_big {
            out.truncate(start);
        }
    }

    /// Copy a run of ordinary bytes inside a line. Returns how many input bytes it used.
    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        if self.mode == Mode::Binary {
            let end = memchr::memchr(b'\r', input).unwrap_or(input.len());
            out.extend_from_slice(&input[..end]);
            if end < input.len() {
                self.st = St::Cr;
                out.push(b'\r');
                return end + 1;
            }
            return end;
        }
        let end = memchr2(b'\r', b'\n', input).unwrap_or(input.len());
        let mut seg = &input[..end];
        // Fold at 2 bytes less than the limit (room for CRLF); limits under 4 never fold, so
        // a fold always leaves room for progress.
        let fold = match self.limits.max_line.saturating_sub(2) {
            f if f >= 2 => f,
            _ => 0,
        };
        while fold > 0 && self.line_len + seg.len() > fold {
            let room = fold - self.line_len;
            out.extend_from_slice(&seg[..room]);
            out.extend_from_slice(b"\r\n ");
            self.folded = true;
            self.line_len = 1;
            seg = &seg[room..];
        }
        out.extend_from_slice(seg);
        self.line_len += seg.len();
        if end < input.len() {
            let c = input[end];
            self.step(c, out);
            end + 1
        } else {
            end
        }
    }

    fn eol(&mut self, out: &mut Vec<u8>, bare: bool) {
        out.extend_from_slice(b"\r\n");
        self.bare_eol |= bare;
        self.prev_crlf = !bare;
        self.st = St::LineStart;
        self.line_len = 0;
    }

    /// One byte of BINARYMIME content: copied as is, with a `.` after CRLF doubled.
    fn step_binary(&mut self, c: u8, out: &mut Vec<u8>) {
        self.st = match (self.st, c) {
            (St::LineStart, b'.') => {
                out.extend_from_slice(b"..");
                St::Mid
            }
            (St::Cr, b'\n') => {
                out.push(c);
                St::LineStart
            }
            (St::Cr, b'\r') | (St::LineStart | St::Mid, b'\r') => {
                out.push(c);
                St::Cr
            }
            (_, c) => {
                out.push(c);
                St::Mid
            }
        };
    }

    /// One byte through the state machine. Returns true at end of data.
    fn step(&mut self, c: u8, out: &mut Vec<u8>) -> bool {
        match (self.st, c) {
            (St::LineStart, b'.') if self.mode == Mode::Data => self.st = St::Dot,
            (St::LineStart, b'.') => {
                out.extend_from_slice(b"..");
                self.line_len = 2;
                self.st = St::Mid;
            }
            (St::LineStart | St::Mid, b'\r') => self.st = St::Cr,
            (St::LineStart | St::Mid, b'\n') => self.eol(out, true),
            (St::LineStart | St::Mid, _) => {
                self.st = St::Mid;
                self.run(&[c], out);
            }
            (St::Cr, b'\n') => self.eol(out, false),
            (St::Cr, _) => {
                self.eol(out, true);
                return self.step(c, out);
            }
            (St::Dot, b'\r') => self.st = St::DotCr,
            (St::Dot, b'\n') => {
                out.extend_from_slice(b"..");
                self.eol(out, true);
            }
            (St::Dot, _) => {
                // RFC 5321 4.5.2: the receiver removes this leading dot.
                self.stuffing += 1;
                out.push(b'.');
                self.line_len = 1;
                self.st = St::Mid;
                return self.step(c, out);
            }
            (St::DotCr, b'\n') if self.prev_crlf => {
                self.st = St::LineStart;
                return true;
            }
            (St::DotCr, b'\n') => {
                // A lone dot after a bare line ending: data, stored stuffed.
                out.extend_from_slice(b"..");
                self.eol(out, false);
                self.bare_eol = true;
            }
            (St::DotCr, _) => {
                out.extend_from_slice(b"..");
                self.eol(out, true);
                return self.step(c, out);
            }
        }
        false
    }
}

/// Watches the header section of the stored form (it stops at the first empty line) and
/// counts `Received:` lines, for `headers.max_received` (mail loop detection).
#[derive(Debug, Clone, Default)]
struct HeaderScan {
    done: bool,
    at_line_start: bool,
    started: bool,
    prefix: Vec<u8>,
    received: usize,
}

impl HeaderScan {
    fn scan(&mut self, mut s: &[u8]) {
        if !self.started {
            self.started = true;
            self.at_line_start = true;
        }
        while !self.done && !s.is_empty() {
            if self.at_line_start && s[0] == b'\r' {
                self.done = true;
                return;
            }
            match memchr::memchr(b'\n', s) {
                Some(nl) => {
                    self.take_prefix(&s[..nl]);
                    self.finish_line();
                    s = &s[nl + 1..];
                }
                None => {
                    self.take_prefix(s);
                    self.at_line_start = false;
                    return;
                }
            }
        }
    }

    fn take_prefix(&mut self, part: &[u8]) {
        let room = 9usize.saturating_sub(self.prefix.len());
        self.prefix.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn finish_line(&mut self) {
        if self.prefix.eq_ignore_ascii_case(b"received:") {
            self.received += 1;
        }
        self.prefix.clear();
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: BodyLimits = BodyLimits {
        max_bytes: 0,
        max_line: 0,
    };

    fn data(input: &[u8]) -> (Vec<u8>, Fed, BodyReceiver) {
        let mut r = BodyReceiver::new(Mode::Data, LIM);
        let mut out = Vec::new();
        let fed = r.feed(input, &mut out);
        (out, fed, r)
    }

    #[test]
    fn plain_message() {
        let (out, fed, r) = data(b"Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n..dot\r\n");
        assert!(fed.done);
        assert_eq!(fed.consumed, 31);
        assert!(!r.bare_eol());
    }

    #[test]
    fn empty_message() {
        let (out, fed, _) = data(b".\r\n");
        assert!(fed.done);
        assert!(out.is_empty());
    }

    #[test]
    fn smuggling_variants_never_end_data() {
        for v in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n\x00.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\x00\r\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\n",
            b"\n.\r\n",
        ] {
            let (out, fed, r) = data(v);
            assert!(!fed.done, "{v:?} ended data");
            assert_eq!(fed.consumed, v.len());
            // the stored form has no line that is a lone dot
            assert!(!out.windows(5).any(|w| w == b"\r\n.\r\n"), "{v:?} -> {out:?}");
            assert!(!out.starts_with(b".\r\n"));
            let _ = r;
        }
    }

    #[test]
    fn bare_lf_is_normalised_and_flagged() {
        let (out, fed, r) = data(b"a\nb\rc\r\n.\r\n");
        assert!(fed.done);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
        assert!(r.bare_eol());
    }

    #[test]
    fn split_anywhere_gives_same_result() {
        let msg: &[u8] = b"H: v\r\n\r\n.x\r\n\r\na\nb\r.\r\n..\r\nend\r\n.\r\nNOOP\r\n";
        let (whole, f, _) = data(msg);
        for cut in 0..msg.len() {
            let mut r = BodyReceiver::new(Mode::Data, LIM);
            let mut out = Vec::new();
            let a = r.feed(&msg[..cut], &mut out);
            assert!(!a.done || a.consumed == f.consumed);
            if !a.done {
                let b = r.feed(&msg[cut..], &mut out);
                assert_eq!(a.consumed + b.consumed, f.consumed);
            }
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn too_big_is_drained() {
        let mut r = BodyReceiver::new(
            Mode::Data,
            BodyLimits {
                max_bytes: 10,
                max_line: 0,
            },
        );
        let mut out = Vec::new();
        let f = r.feed(b"0123456789abcdef\r\n.\r\n", &mut out);
        assert!(f.done && r.too_big());
        assert!(out.is_empty());
    }

    #[test]
    fn long_lines_fold() {
        let mut r = BodyReceiver::new(
            Mode::Data,
            BodyLimits {
                max_bytes: 0,
                max_line: 10,
            },
        );
        let mut out = Vec::new();
        r.feed(b"abcdefghijklmnop\r\n.\r\n", &mut out);
        assert_eq!(out, b"abcdefgh\r\n ijklmno\r\n p\r\n");
        assert!(r.folded());
    }

    #[test]
    fn bdat_stuffs_and_terminates() {
        let mut r = BodyReceiver::new(Mode::Bdat, LIM);
        let mut out = Vec::new();
        r.feed(b"a\r\n.\r\n.", &mut out);
        r.feed(b"b\r\nlast", &mut out);
        r.finish(&mut out);
        assert_eq!(out, b"a\r\n..\r\n..b\r\nlast\r\n");
    }

    #[test]
    fn binary_is_kept_byte_for_byte() {
        let mut r = BodyReceiver::new(
            Mode::Binary,
            BodyLimits {
                max_bytes: 0,
                max_line: 10,
            },
        );
        let mut out = Vec::new();
        let input = b"a\nb\rc\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\r\n.x\r";
        r.feed(&input[..9], &mut out);
        r.feed(&input[9..], &mut out);
        r.finish(&mut out);
        assert_eq!(
            out,
            b"a\nb\rc\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\r\n..x\r"
        );
        assert!(!r.bare_eol() && !r.folded());
    }

    #[test]
    fn size_excludes_stuffing_dots() {
        let mut r = BodyReceiver::new(
            Mode::Data,
            BodyLimits {
                max_bytes: 6,
                max_line: 0,
            },
        );
        let mut out = Vec::new();
        r.feed(b"..abc\r\n.\r\n", &mut out);
        assert_eq!(r.bytes(), 6, "'.abc' CRLF is 6 octets");
        assert!(!r.too_big());
    }

    #[test]
    fn counts_received_headers() {
        let (_, _, r) = data(b"Received: a\r\nreceived: b\r\nX: y\r\n\r\nReceived: body\r\n.\r\n");
        assert_eq!(r.received_headers(), 2);
    }
}
