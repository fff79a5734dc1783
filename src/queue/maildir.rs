//! Local delivery into Maildirs (`<root>/<domain>/<user>/{tmp,new,cur}`), the default route
//! for `host_list` domains. Blocking; run on a blocking thread.
//!
//! Each message is written to `tmp/`, fsynced, renamed into `new/`, and `new/` is fsynced:
//! a delivered message survives a crash just like a queued one.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Mailbox directories this process has made durable (see [`ensure_mailbox`]).
static DURABLE: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// Mailboxes remembered at most; past it the set starts again (costs a few fsyncs, nothing else).
const DURABLE_MAX: usize = 100_000;

/// Why one recipient could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaildirError {
    /// The mailbox name cannot be a directory name (`/`, `..`, control characters): 5.1.3.
    #[error("invalid mailbox name")]
    BadMailbox,
    /// Disk errors: temporary.
    #[error("{0}")]
    Io(String),
}

/// The mailbox directory of `user@domain` under `root`, or an error for names that could
/// escape it.
pub fn mailbox_dir(root: &Path, user: &str, domain: &str) -> Result<PathBuf, MaildirError> {
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.contains("..")
            && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
    };
    let user = user.trim_matches('"').to_lowercase();
    let domain = domain.to_ascii_lowercase();
    if !ok(&user) || !ok(&domain) {
        return Err(MaildirError::BadMailbox);
    }
    Ok(root.join(domain).join(user))
}

/// Deliver one message (stored form) to one mailbox.
pub fn deliver(dir: &Path, return_path: &str, rcpt: &str, stored: &[u8]) -> Result<PathBuf, MaildirError> {
    write_message(dir, return_path, rcpt, stored).map_err(|e| MaildirError::Io(e.to_string()))
}

/// Create the mailbox's `tmp`, `new` and `cur` (and any missing parent) and make their entries
/// durable the first time this process delivers to it: fsync every directory that gained an
/// entry, and always the mailbox, its domain directory and the Maildir root (another delivery
/// may have created those a moment ago). One first delivery at a time, so none returns before
/// the directories it relies on are durable. Without that, a crash could lose a new mailbox
/// directory (and the message in it) after the queue file was already removed.
fn ensure_mailbox(dir: &Path) -> io::Result<()> {
    // The `is_dir` check notices a mailbox removed by hand since.
    if DURABLE.lock().unwrap_or_else(|p| p.into_inner()).contains(dir) && dir.join("new").is_dir() {
        return Ok(());
    }
    static FIRST_DELIVERY: Mutex<()> = Mutex::new(());
    let _one_at_a_time = FIRST_DELIVERY.lock().unwrap_or_else(|p| p.into_inner());
    // The deepest directory that exists now: the highest one that may gain an entry.
    let existing = dir.ancestors().position(Path::is_dir).unwrap_or(0);
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // `<root>/<domain>/<user>`: the user dir, the domain dir and the root at least.
    for d in dir.ancestors().take(existing.max(2) + 1) {
        if d.as_os_str().is_empty() {
            break;
        }
        File::open(d)?.sync_all()?;
    }
    let mut known = DURABLE.lock().unwrap_or_else(|p| p.into_inner());
    if known.len() >= DURABLE_MAX {
        known.clear();
    }
    known.insert(dir.to_path_buf());
    Ok(())
}

fn write_message(dir: &Path, return_path: &str, rcpt: &str, stored: &[u8]) -> io::Result<PathBuf> {
    ensure_mailbox(dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let unique = format!(
        "{}.M{}P{}Q{}.posta",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join("tmp").join(&unique);
    let dest = dir.join("new").join(&unique);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let clean = |s: &str| s.replace(['\r', '\n'], "");
        let head = format!(
            "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
            clean(return_path),
            clean(rcpt)
        );
        f.write_all(head.as_bytes())?;
        f.write_all(&crate::protocol::dsn::unstuff(stored))?;
        f.sync_data()?;
        fs::rename(&tmp, &dest)?;
        File::open(dir.join("new"))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|_| dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        let root = Path::new("/srv/mail");
        assert_eq!(
            mailbox_dir(root, "Bob", "Example.COM").unwrap(),
            root.join("example.com/bob")
        );
        for (u, d) in [
            ("../x", "a.b"),
            ("a/b", "a.b"),
            (".hidden", "a.b"),
            ("a", ".."),
            ("a\nb", "a.b"),
            ("", "a.b"),
        ] {
            assert_eq!(mailbox_dir(root, u, d), Err(MaildirError::BadMailbox), "{u}@{d}");
        }
    }

    #[test]
    fn unstuffs_and_delivers() {
        let d = tempfile::tempdir().unwrap();
        let mb = mailbox_dir(d.path(), "u", "x.org").unwrap();
        let p = deliver(&mb, "s@y.org", "u@x.org", b"Subject: t\r\n\r\n..dot\r\n").unwrap();
        let text = fs::read_to_string(p).unwrap();
        assert_eq!(
            text,
            "Return-Path: <s@y.org>\r\nDelivered-To: u@x.org\r\nSubject: t\r\n\r\n.dot\r\n"
        );
        assert!(fs::read_dir(mb.join("tmp")).unwrap().next().is_none());
    }

    #[test]
    fn a_mailbox_removed_by_hand_is_made_again() {
        let d = tempfile::tempdir().unwrap();
        let mb = mailbox_dir(d.path(), "gone", "x.org").unwrap();
        deliver(&mb, "s@y.org", "gone@x.org", b"Subject: 1\r\n\r\n").unwrap();
        fs::remove_dir_all(&mb).unwrap();
        let p = deliver(&mb, "s@y.org", "gone@x.org", b"Subject: 2\r\n\r\n").unwrap();
        assert!(fs::read_to_string(p).unwrap().ends_with("Subject: 2\r\n\r\n"));
        assert!(mb.join("cur").is_dir());
    }
}
