//! Haraka's outbound queue file format, byte for byte.
//!
//! ```text
//! [4-byte big-endian length L]["\n" + JSON todo (tab-indented) + "\n", L bytes][message]
//! ```
//!
//! The message is stored as received: CRLF line endings, dot-stuffed. File names are
//! `<arrival_ms>_<next_attempt_ms>_<attempts>_<pid>_<uid>_<counter>_<host>`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hooks::state::Notes;
use crate::protocol::address::Mailbox;

/// An address as Haraka's address-rfc2821 serialises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TodoAddress {
    pub original: String,
    pub original_host: Option<String>,
    pub host: Option<String>,
    pub user: Option<String>,
    /// DSN fields and anything else a writer added (`dsn_notify`, `dsn_orcpt`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl TodoAddress {
    /// `<>` for `None`.
    pub fn from_mailbox(m: Option<&Mailbox>) -> Self {
        match m {
            None => TodoAddress {
                original: "<>".into(),
                original_host: None,
                host: None,
                user: None,
                extra: Default::default(),
            },
            Some(m) => TodoAddress {
                original: format!("<{m}>"),
                original_host: Some(m.domain.clone()),
                host: Some(m.host()),
                user: Some(m.local.clone()),
                extra: Default::default(),
            },
        }
    }
}

/// The JSON header of a queue file (Haraka's `TODOItem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Todo {
    pub queue_time: u64,
    pub domain: String,
    pub rcpt_to: Vec<TodoAddress>,
    pub mail_from: TodoAddress,
    #[serde(default)]
    pub notes: Notes,
    pub uuid: String,
    #[serde(default)]
    pub force_tls: bool,
    /// Anything else (posta's DSN envelope fields `dsn_ret`, `dsn_envid`, `smtputf8`, `body`).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Why a queue file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueFileError {
    #[error("file is shorter than its 4-byte length prefix")]
    Truncated,
    #[error("header length {0} runs past the end of the file")]
    BadLength(u32),
    #[error("header is not a JSON todo: {0}")]
    BadJson(String),
}

/// Encode the length prefix and JSON header.
pub fn encode_header(todo: &Todo) -> Vec<u8> {
    let mut json = Vec::with_capacity(512);
    json.push(b'\n');
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut json, fmt);
    // Serialising plain data to a Vec cannot fail.
    let _ = todo.serialize(&mut ser);
    json.push(b'\n');
    let mut out = Vec::with_capacity(json.len() + 4);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Length of the prefix + header, read from the first 4 bytes.
pub fn header_len(prefix: &[u8]) -> Result<u32, QueueFileError> {
    let b: [u8; 4] = prefix
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(QueueFileError::Truncated)?;
    Ok(u32::from_be_bytes(b))
}

/// Decode a whole queue file into its todo and message.
pub fn decode(bytes: &[u8]) -> Result<(Todo, &[u8]), QueueFileError> {
    let len = header_len(bytes)?;
    let end = 4usize.checked_add(len as usize).ok_or(QueueFileError::BadLength(len))?;
    let header = bytes.get(4..end).ok_or(QueueFileError::BadLength(len))?;
    let todo = parse_todo(header)?;
    Ok((todo, &bytes[end..]))
}

/// Parse the JSON header (Haraka checks that it ends in `}`).
pub fn parse_todo(header: &[u8]) -> Result<Todo, QueueFileError> {
    let trimmed = header.trim_ascii();
    if !trimmed.ends_with(b"}") {
        return Err(QueueFileError::BadJson("header does not end in '}'".into()));
    }
    serde_json::from_slice(trimmed).map_err(|e| QueueFileError::BadJson(e.to_string()))
}

/// A queue file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueName {
    pub arrival: u64,
    pub next_attempt: u64,
    pub attempts: u32,
    pub pid: u32,
    pub uid: String,
    pub counter: u32,
    pub host: String,
}

impl QueueName {
    /// Haraka escapes `\`, `:` and `_` in the host part.
    fn escape_host(h: &str) -> String {
        h.replace('\\', "\\057").replace(':', "\\072").replace('_', "\\137")
    }

    fn unescape_host(h: &str) -> String {
        h.replace("\\137", "_").replace("\\072", ":").replace("\\057", "\\")
    }

    /// Parse a current-style name (7 parts); `None` for anything else.
    pub fn parse(name: &str) -> Option<QueueName> {
        let parts: Vec<&str> = name.splitn(7, '_').collect();
        if parts.len() != 7 {
            return None;
        }
        Some(QueueName {
            arrival: parts[0].parse().ok()?,
            next_attempt: parts[1].parse().ok()?,
            attempts: parts[2].parse().ok()?,
            pid: parts[3].parse().ok()?,
            uid: parts[4].to_string(),
            counter: parts[5].parse().ok()?,
            host: Self::unescape_host(parts[6]),
        })
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}_{}_{}_{}",
            self.arrival,
            self.next_attempt,
            self.attempts,
            self.pid,
            self.uid,
            self.counter,
            Self::escape_host(&self.host)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo() -> Todo {
        let m = Mailbox {
            local: "a".into(),
            domain: "B.example".into(),
        };
        Todo {
            queue_time: 1,
            domain: "b.example".into(),
            rcpt_to: vec![TodoAddress::from_mailbox(Some(&m))],
            mail_from: TodoAddress::from_mailbox(None),
            notes: Notes::new(),
            uuid: "U.1.1".into(),
            force_tls: false,
            extra: Default::default(),
        }
    }

    #[test]
    fn round_trip() {
        let mut file = encode_header(&todo());
        file.extend_from_slice(b"Subject: x\r\n\r\nbody\r\n");
        let (t, msg) = decode(&file).unwrap();
        assert_eq!(t, todo());
        assert_eq!(msg, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(&file[4..6], b"\n{");
    }

    #[test]
    fn corrupt_files() {
        assert_eq!(decode(b"\0\0"), Err(QueueFileError::Truncated));
        assert_eq!(decode(b"\0\0\0\x10{}"), Err(QueueFileError::BadLength(16)));
        assert!(matches!(decode(b"\0\0\0\x02{x"), Err(QueueFileError::BadJson(_))));
        assert!(matches!(decode(b"\0\0\0\x02{}"), Err(QueueFileError::BadJson(_))));
    }

    #[test]
    fn names() {
        let n = QueueName {
            arrival: 1,
            next_attempt: 2,
            attempts: 0,
            pid: 77,
            uid: "AbCdEf".into(),
            counter: 5,
            host: "mx_1:x".into(),
        };
        let s = n.to_string();
        assert_eq!(s, "1_2_0_77_AbCdEf_5_mx\\1371\\072x");
        assert_eq!(QueueName::parse(&s), Some(n));
        assert_eq!(QueueName::parse("__tmp__.x"), None);
    }
}
