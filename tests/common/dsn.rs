//! Parsing the RFC 3464 DSNs posta sends, for the delivery tests (mail-parser).
#![allow(dead_code)]

use mail_parser::{MessageParser, MimeHeaders};

use super::sink::Received;

/// A DSN's `message/delivery-status` fields (per-message block, then one block per
/// recipient, as (name, value) pairs) and its human-readable first part.
pub struct Dsn {
    pub per_message: Vec<(String, String)>,
    pub recipients: Vec<Vec<(String, String)>>,
    pub human: String,
}

impl Dsn {
    pub fn parse(msg: &Received) -> Dsn {
        let parsed = MessageParser::default()
            .parse(&msg.body)
            .unwrap_or_else(|| panic!("DSN does not parse:\n{}", msg.text()));
        let ct = parsed.content_type().expect("DSN has a Content-Type");
        assert_eq!(ct.ctype(), "multipart", "{}", msg.text());
        assert_eq!(ct.subtype(), Some("report"), "{}", msg.text());
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"), "{}", msg.text());
        let part = parsed
            .parts
            .iter()
            .find(|p| {
                p.content_type()
                    .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
            })
            .unwrap_or_else(|| panic!("no message/delivery-status part in\n{}", msg.text()));
        let text = String::from_utf8_lossy(part.contents()).replace("\r\n", "\n");
        let mut blocks = text.split("\n\n").filter(|b| !b.trim().is_empty()).map(fields);
        let per_message = blocks.next().unwrap_or_default();
        let recipients: Vec<_> = blocks.collect();
        let human = parsed
            .body_text(0)
            .unwrap_or_else(|| panic!("DSN without a text part:\n{}", msg.text()))
            .into_owned();
        Dsn {
            per_message,
            recipients,
            human,
        }
    }

    pub fn get(fields: &[(String, String)], name: &str) -> Option<String> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
    pub fn msg(&self, name: &str) -> Option<String> {
        Self::get(&self.per_message, name)
    }
    /// A field of the first recipient block.
    pub fn rcpt(&self, name: &str) -> Option<String> {
        self.recipients.first().and_then(|r| Self::get(r, name))
    }
    /// `Final-Recipient` of every recipient block.
    pub fn final_recipients(&self) -> Vec<String> {
        self.recipients
            .iter()
            .filter_map(|r| Self::get(r, "Final-Recipient"))
            .collect()
    }
}

/// `Name: value` lines with folded continuations.
pub fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// A DSN from `<>` to `sender` reporting that the (only) recipient `final_rcpt` (typed, e.g.
/// `rfc822; bob@remote.test`) failed with `status`.
pub fn assert_failure_dsn(msg: &Received, sender: &str, final_rcpt: &str, status: &str) -> Dsn {
    assert_eq!(msg.mail_from, "", "a DSN comes from the null sender");
    assert_eq!(msg.rcpts, vec![sender.to_string()]);
    let dsn = Dsn::parse(msg);
    assert_eq!(
        dsn.msg("Reporting-MTA").as_deref(),
        Some("dns; mx.example.test"),
        "{}",
        msg.text()
    );
    assert_eq!(dsn.recipients.len(), 1, "{}", msg.text());
    let got = dsn.rcpt("Final-Recipient").unwrap_or_default();
    assert!(
        got.eq_ignore_ascii_case(final_rcpt),
        "Final-Recipient {got:?}, want {final_rcpt:?}\n{}",
        msg.text()
    );
    assert_eq!(dsn.rcpt("Action").as_deref(), Some("failed"), "{}", msg.text());
    assert_eq!(dsn.rcpt("Status").as_deref(), Some(status), "{}", msg.text());
    dsn
}
