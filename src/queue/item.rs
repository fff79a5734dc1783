//! A queue item on disk: reading its header, and the durable changes delivery makes to it
//! (retry rename, recipient rewrite after a partial delivery, quarantine of corrupt files).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::file::{encode_header, header_len, parse_todo, QueueFileError, QueueName, Todo};
use super::spool::TMP_PREFIX;

/// Sub-directory for files that cannot be parsed (never deleted, never retried).
pub const ERROR_DIR: &str = "error";

/// A queue file whose header has been read.
#[derive(Debug, Clone)]
pub struct QueueItem {
    pub name: String,
    pub parsed: QueueName,
    pub path: PathBuf,
    pub todo: Todo,
    /// Where the message starts in the file.
    pub body_offset: u64,
    /// Message length in bytes.
    pub body_len: u64,
}

/// Why an item could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("queue file is gone")]
    Gone,
    #[error("unreadable queue file: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt queue file: {0}")]
    Corrupt(#[from] QueueFileError),
}

/// Read the header of `dir/name` (the message stays on disk).
pub fn load(dir: &Path, name: &str) -> Result<QueueItem, LoadError> {
    let parsed = QueueName::parse(name).ok_or(QueueFileError::BadJson("file name is not a queue name".into()))?;
    let path = dir.join(name);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Gone),
        Err(e) => return Err(e.into()),
    };
    let size = f.metadata()?.len();
    let mut prefix = [0u8; 4];
    f.read_exact(&mut prefix).map_err(|_| QueueFileError::Truncated)?;
    let len = header_len(&prefix)? as u64;
    if 4 + len > size || len > 16 << 20 {
        return Err(QueueFileError::BadLength(len as u32).into());
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)?;
    let todo = parse_todo(&header)?;
    Ok(QueueItem {
        name: name.to_string(),
        parsed,
        path,
        todo,
        body_offset: 4 + len,
        body_len: size - 4 - len,
    })
}

/// Open the message part of an item for reading.
pub fn open_body(item: &QueueItem) -> io::Result<File> {
    let mut f = File::open(&item.path)?;
    f.seek(SeekFrom::Start(item.body_offset))?;
    Ok(f)
}

/// Read the whole message (bounces, maildir delivery of small messages).
pub fn read_body(item: &QueueItem) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(item.body_len as usize);
    open_body(item)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Schedule a retry: rename to a name with the new attempt count and next-attempt time.
/// Returns the new name.
pub fn rename_for_retry(dir: &Path, item: &QueueItem, attempts: u32, next_ms: u64) -> io::Result<String> {
    let mut n = item.parsed.clone();
    n.attempts = attempts;
    n.next_attempt = next_ms;
    let new = n.to_string();
    fs::rename(&item.path, dir.join(&new))?;
    Ok(new)
}

/// Replace the item with one holding `todo` (fewer recipients after a partial delivery),
/// durably: write a temp file, fsync, rename over a new name, unlink the old one, fsync the
/// directory. A crash before the rename leaves the old file; after it, possibly both (the
/// new one is in place before the old one is unlinked): then every recipient of the old file,
/// delivered ones included, may get the message again. That is the documented duplicate
/// window; nothing is ever lost.
pub fn rewrite(dir: &Path, item: &QueueItem, todo: &Todo, attempts: u32, next_ms: u64) -> io::Result<String> {
    let mut n = item.parsed.clone();
    n.attempts = attempts;
    n.next_attempt = next_ms;
    n.counter = (n.counter + 5000) % 10_000;
    let new = n.to_string();
    let tmp = dir.join(format!("{TMP_PREFIX}{new}"));
    let written = (|| {
        let mut out = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        out.write_all(&encode_header(todo))?;
        io::copy(&mut open_body(item)?, &mut out)?;
        out.sync_data()?;
        fs::rename(&tmp, dir.join(&new))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is the commit point: from here the new file is the item. A failure to drop
    // the old one or to sync the directory is logged, not returned (the old file would then be
    // retried as if nothing had happened, beside an untracked new one).
    if let Err(e) = fs::remove_file(&item.path) {
        tracing::error!(file = %item.name, error = %e, "cannot remove the rewritten queue file's old copy");
    }
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::error!(dir = %dir.display(), error = %e, "directory fsync after a rewrite failed");
    }
    Ok(new)
}

/// Delete a finished item.
pub fn remove(item: &QueueItem) -> io::Result<()> {
    match fs::remove_file(&item.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Move a file that cannot be parsed to `dir/error/` (never deleted, never retried).
pub fn quarantine(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let err_dir = dir.join(ERROR_DIR);
    fs::create_dir_all(&err_dir)?;
    let dest = err_dir.join(name);
    fs::rename(dir.join(name), &dest)?;
    Ok(dest)
}

/// Queue items with their due time (ms), and names that are not queue files.
pub type ScanResult = (Vec<(String, u64)>, Vec<String>);

/// What is in the queue dir at start: items with their due time (from the file name, no
/// file is opened), and names that are not queue files.
pub fn scan(dir: &Path) -> io::Result<ScanResult> {
    let mut items = Vec::new();
    let mut strangers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) || name.starts_with("error.") || name.starts_with('.') {
            continue;
        }
        match QueueName::parse(&name) {
            Some(q) => items.push((name, q.next_attempt)),
            None => strangers.push(name),
        }
    }
    Ok((items, strangers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::file::{Todo, TodoAddress};

    fn todo(rcpts: &[&str]) -> Todo {
        Todo {
            queue_time: 1,
            domain: "x.org".into(),
            rcpt_to: rcpts
                .iter()
                .map(|r| {
                    let (l, d) = r.split_once('@').unwrap();
                    TodoAddress::from_mailbox(Some(&crate::protocol::address::Mailbox {
                        local: l.into(),
                        domain: d.into(),
                    }))
                })
                .collect(),
            mail_from: TodoAddress::from_mailbox(None),
            notes: Default::default(),
            uuid: "U.1.1".into(),
            force_tls: false,
            extra: Default::default(),
        }
    }

    fn write(dir: &Path, name: &str, t: &Todo, body: &[u8]) {
        let mut bytes = encode_header(t);
        bytes.extend_from_slice(body);
        fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn load_retry_rewrite_remove() {
        let d = tempfile::tempdir().unwrap();
        let name = "10_10_0_1_abcdef_1_me";
        write(
            d.path(),
            name,
            &todo(&["a@x.org", "b@x.org"]),
            b"Subject: s\r\n\r\nbody\r\n",
        );
        let item = load(d.path(), name).unwrap();
        assert_eq!(item.todo.rcpt_to.len(), 2);
        assert_eq!(read_body(&item).unwrap(), b"Subject: s\r\n\r\nbody\r\n");
        let renamed = rename_for_retry(d.path(), &item, 1, 99).unwrap();
        assert!(renamed.starts_with("10_99_1_1_abcdef_1_"));
        let item = load(d.path(), &renamed).unwrap();
        let rewritten = rewrite(d.path(), &item, &todo(&["b@x.org"]), 2, 200).unwrap();
        let item = load(d.path(), &rewritten).unwrap();
        assert_eq!(item.todo.rcpt_to.len(), 1);
        assert_eq!(read_body(&item).unwrap(), b"Subject: s\r\n\r\nbody\r\n");
        assert_eq!(scan(d.path()).unwrap().0.len(), 1);
        remove(&item).unwrap();
        assert!(scan(d.path()).unwrap().0.is_empty());
    }

    #[test]
    fn corrupt_and_strangers() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("10_10_0_1_abcdef_2_me"), b"\0\0\0\x50{}").unwrap();
        fs::write(d.path().join("README"), b"hi").unwrap();
        assert!(matches!(
            load(d.path(), "10_10_0_1_abcdef_2_me"),
            Err(LoadError::Corrupt(_))
        ));
        let (items, strangers) = scan(d.path()).unwrap();
        assert_eq!((items.len(), strangers), (1, vec!["README".to_string()]));
        quarantine(d.path(), "10_10_0_1_abcdef_2_me").unwrap();
        assert!(d.path().join("error/10_10_0_1_abcdef_2_me").exists());
        assert!(matches!(load(d.path(), "nope_1"), Err(LoadError::Corrupt(_))));
        assert!(matches!(load(d.path(), "1_1_0_1_x_1_gone"), Err(LoadError::Gone)));
    }
}
