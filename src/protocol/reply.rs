//! SMTP replies: a code, an optional RFC 3463 enhanced status code and one or more text lines.
//!
//! Every reply posta sends is built here, so that the wire format (`code-text` for continuation
//! lines, `code text` for the last one, CRLF endings, no line over 512 octets) is decided in one
//! place.

use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail` (e.g. `5.1.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

/// Longest text we put on one reply line, so that code, enhanced code and CRLF stay within the
/// 512 octets RFC 5321 4.5.3.1.5 allows.
const MAX_TEXT: usize = 480;

impl Reply {
    /// A one-line reply with an optional enhanced code. posta advertises ENHANCEDSTATUSCODES,
    /// so every 2xx/4xx/5xx reply except the greeting and HELO/EHLO carries one (RFC 2034).
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced,
            lines: split_text(&text.into()),
        }
    }

    /// A reply with an explicit enhanced code.
    pub fn ext(code: u16, e: (u8, u16, u16), text: impl Into<String>) -> Self {
        Reply::new(code, Some(Enhanced(e.0, e.1, e.2)), text)
    }

    /// A reply that carries no enhanced code (greeting, HELO/EHLO, 354, 334).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply::new(code, None, text)
    }

    /// A multi-line reply without enhanced codes (EHLO).
    pub fn multi(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            lines: lines.iter().flat_map(|l| split_text(l)).collect(),
        }
    }

    /// Replace the text, keeping the code and enhanced code. Used when a hook supplies a message.
    pub fn with_text(mut self, text: &str) -> Self {
        self.lines = split_text(text);
        self
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Append the wire form of this reply to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() { &empty } else { &self.lines };
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(itoa3(self.code).as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (tests and logs).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

fn itoa3(code: u16) -> String {
    format!("{:03}", code.min(999))
}

/// Split hook/config text into reply lines: on `\n`, dropping blank lines (as Haraka does),
/// removing CR and other control characters so that no text can forge an extra reply line, and
/// cutting each line at `MAX_TEXT` bytes on a character boundary.
fn split_text(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| {
            let mut s: String = l.chars().filter(|c| !c.is_control()).collect();
            if s.len() > MAX_TEXT {
                let mut cut = MAX_TEXT;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            s
        })
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_wire().trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced() {
        let r = Reply::ext(250, (2, 1, 0), "sender <a@b> OK");
        assert_eq!(r.to_wire(), "250 2.1.0 sender <a@b> OK\r\n");
    }

    #[test]
    fn multi_line() {
        let r = Reply::multi(250, vec!["me Hello".into(), "PIPELINING".into(), "SIZE 10".into()]);
        assert_eq!(r.to_wire(), "250-me Hello\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
    }

    #[test]
    fn enhanced_on_every_line_and_no_injection() {
        let r = Reply::ext(550, (5, 7, 1), "no\r\n250 injected\nsecond");
        assert_eq!(
            r.to_wire(),
            "550-5.7.1 no\r\n550-5.7.1 250 injected\r\n550 5.7.1 second\r\n"
        );
    }

    #[test]
    fn long_text_is_cut() {
        let r = Reply::ext(550, (5, 0, 0), "é".repeat(600));
        for line in r.to_wire().split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() + 2 <= 512);
        }
    }
}
