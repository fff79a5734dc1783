//! Offline queue tools: list, count, inspect, delete, flush, hold, release and bounce queue
//! items by working on the queue directory itself (`posta queue …`).
//!
//! These functions assume nothing else is changing the directory: the daemon is stopped, or the
//! directory is a copy (a Haraka 3.x queue dir works too: same file names, same format). A
//! running daemon keeps its own index of the queue in memory and would not see a rename done
//! here; asking a running daemon is a separate (online) mode, not this module.
//!
//! Layout they rely on (see `docs/queue.md`):
//! - `<queue>/<name>`: the active queue. Names starting with `__tmp__.` (writes in progress,
//!   recycled files), `.` (Haraka's leftovers) or `error.` (Haraka's quarantine) are not items.
//! - `<queue>/hold/<name>`: held items. The daemon's start-up scan ([`item::scan`]) reads only
//!   the regular files directly in the queue dir, so a held item is never scheduled. Haraka
//!   skips the `hold` entry too (it is not a queue file name).
//! - `<queue>/error/<name>`: files the daemon could not parse (quarantine).
//!
//! Every function reads headers only ([`item::load`]) unless it needs the message; a file that
//! cannot be parsed is reported as [`Entry::Corrupt`], never a panic.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file::{QueueName, Todo, TodoAddress};
use super::item::{self, LoadError, QueueItem, ERROR_DIR};
use super::spool::{CommitRequest, MessageBody, Spool, TMP_PREFIX};
use crate::hooks::state::Recipient;
use crate::protocol::address::Mailbox;
use crate::protocol::command::{Body, MailParams};
use crate::protocol::dsn::{self, BounceTemplate, Diagnostic, DsnAction, RecipientReport};

/// Sub-directory of held items (not scheduled until released).
pub const HOLD_DIR: &str = "hold";

/// Upper bounds of the age buckets in minutes (Postfix qshape's columns); the last bucket holds
/// everything older than the last bound.
pub const AGE_BOUNDS_MIN: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// The labels of the age buckets, youngest first.
pub const AGE_LABELS: [&str; 10] = [
    "5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+",
];

/// Longest header section read for `inspect` (a larger one is cut).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// What went wrong in a queue tool.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("queue directory {} does not exist", .0.display())]
    NoQueueDir(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADir(PathBuf),
    #[error("no queue item {id:?} in {}", .dir.display())]
    UnknownId { id: String, dir: PathBuf },
    #[error("{0:?} is not a queue item id (a queue file name)")]
    BadId(String),
    #[error("{id}: corrupt queue file: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("{0} is held; release it first")]
    Held(String),
    #[error("{0} is not held")]
    NotHeld(String),
    #[error("{0} is already held")]
    AlreadyHeld(String),
    #[error("{0} exists in the queue already; not overwritten")]
    Exists(String),
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
    #[error("cannot queue the DSN for {id}: {reason}; the original stays queued")]
    Bounce { id: String, reason: String },
}

impl InspectError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> InspectError {
        let what = what.into();
        move |err| InspectError::Io { what, err }
    }
}

type Result<T> = std::result::Result<T, InspectError>;

/// One recipient of an item, with what the last delivery attempt left on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptInfo {
    /// Without angle brackets.
    pub address: String,
    /// `dsn_status` (enhanced status code of the last failure), when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `reason` (the last failure, as text), when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RcptInfo {
    fn from_todo(a: &TodoAddress) -> RcptInfo {
        let text = |k: &str| {
            a.extra.get(k).and_then(|v| match v {
                serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        RcptInfo {
            address: bare(a),
            status: text("dsn_status"),
            reason: text("reason"),
        }
    }

    /// `status reason`, or whichever is present (the reason alone when it holds the status, as
    /// an SMTP reply such as `452 4.2.2 Mailbox full` does).
    pub fn error(&self) -> Option<String> {
        match (&self.status, &self.reason) {
            (Some(s), Some(r)) if r.split_whitespace().any(|w| w == s) => Some(r.clone()),
            (Some(s), Some(r)) => Some(format!("{s} {r}")),
            (Some(s), None) => Some(s.clone()),
            (None, Some(r)) => Some(r.clone()),
            (None, None) => None,
        }
    }
}

/// A queue item as `list` shows it (from its file name and header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSummary {
    /// The file name.
    pub id: String,
    /// In `hold/`.
    pub held: bool,
    /// From the file name, ms since the epoch.
    pub arrival_ms: u64,
    pub next_attempt_ms: u64,
    pub attempts: u32,
    /// The destination domain of the file (`todo.domain`, lower-cased).
    pub domain: String,
    /// Without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<RcptInfo>,
    /// Message size in bytes.
    pub size: u64,
}

impl ItemSummary {
    fn from_item(item: &QueueItem, held: bool) -> ItemSummary {
        ItemSummary {
            id: item.name.clone(),
            held,
            arrival_ms: item.parsed.arrival,
            next_attempt_ms: item.parsed.next_attempt,
            attempts: item.parsed.attempts,
            domain: item.todo.domain.to_ascii_lowercase(),
            sender: bare(&item.todo.mail_from),
            recipients: item.todo.rcpt_to.iter().map(RcptInfo::from_todo).collect(),
            size: item.body_len,
        }
    }

    /// The distinct last errors of the recipients, joined with `; ` (`None` when there is none).
    pub fn last_error(&self) -> Option<String> {
        let mut seen: Vec<String> = Vec::new();
        for e in self.recipients.iter().filter_map(RcptInfo::error) {
            if !seen.contains(&e) {
                seen.push(e);
            }
        }
        (!seen.is_empty()).then(|| seen.join("; "))
    }
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entry {
    Item(ItemSummary),
    /// A file in the queue dir that is not a readable queue item.
    Corrupt {
        id: String,
        /// Why it cannot be read.
        corrupt: String,
        /// From the file name, when it parses.
        #[serde(skip_serializing_if = "Option::is_none")]
        arrival_ms: Option<u64>,
    },
}

impl Entry {
    pub fn id(&self) -> &str {
        match self {
            Entry::Item(s) => &s.id,
            Entry::Corrupt { id, .. } => id,
        }
    }

    fn arrival(&self) -> Option<u64> {
        match self {
            Entry::Item(s) => Some(s.arrival_ms),
            Entry::Corrupt { arrival_ms, .. } => *arrival_ms,
        }
    }
}

/// Which items a command applies to. All conditions must hold; an empty filter matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The destination domain (`todo.domain` or a recipient's domain), case-insensitive, exact.
    pub domain: Option<String>,
    /// The sender: a whole address, a domain (`example.com` or `@example.com`), or `<>` (or the
    /// empty string) for the null sender; case-insensitive.
    pub sender: Option<String>,
    /// Arrived at least this long ago (ms).
    pub older_than_ms: Option<u64>,
}

impl Filter {
    /// True when only the age is asked for (a corrupt file can then still be matched).
    fn only_age(&self) -> bool {
        self.domain.is_none() && self.sender.is_none()
    }

    pub fn matches(&self, s: &ItemSummary, now_ms: u64) -> bool {
        if let Some(d) = &self.domain {
            let d = d.trim().trim_start_matches('@');
            let hit = s.domain.eq_ignore_ascii_case(d)
                || s.recipients.iter().any(|r| {
                    r.address
                        .rsplit_once('@')
                        .is_some_and(|(_, h)| h.eq_ignore_ascii_case(d))
                });
            if !hit {
                return false;
            }
        }
        if let Some(want) = &self.sender {
            let want = want.trim();
            let hit = if want.is_empty() || want == "<>" {
                s.sender.is_empty()
            } else {
                let want = want.strip_prefix('<').and_then(|w| w.strip_suffix('>')).unwrap_or(want);
                if want.contains('@') && !want.starts_with('@') {
                    s.sender.eq_ignore_ascii_case(want)
                } else {
                    let dom = want.trim_start_matches('@');
                    s.sender
                        .rsplit_once('@')
                        .is_some_and(|(_, h)| h.eq_ignore_ascii_case(dom))
                }
            };
            if !hit {
                return false;
            }
        }
        self.age_ok(Some(s.arrival_ms), now_ms)
    }

    fn age_ok(&self, arrival: Option<u64>, now_ms: u64) -> bool {
        match (self.older_than_ms, arrival) {
            (None, _) => true,
            (Some(min), Some(a)) => now_ms.saturating_sub(a) >= min,
            (Some(_), None) => false,
        }
    }

    fn matches_entry(&self, e: &Entry, now_ms: u64) -> bool {
        match e {
            Entry::Item(s) => self.matches(s, now_ms),
            Entry::Corrupt { arrival_ms, .. } => self.only_age() && self.age_ok(*arrival_ms, now_ms),
        }
    }
}

/// Check that `dir` is an existing directory.
pub fn check_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InspectError::NotADir(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InspectError::NoQueueDir(dir.to_path_buf())),
        Err(e) => Err(InspectError::Io {
            what: format!("cannot read {}", dir.display()),
            err: e,
        }),
    }
}

/// True for names that are never queue items (temp and recycled files, Haraka's dot files and
/// quarantined `error.*` files).
fn not_an_item(name: &str) -> bool {
    name.starts_with(TMP_PREFIX) || name.starts_with('.') || name.starts_with("error.")
}

/// The regular files of `dir` that may be queue items, sorted by name. A missing `dir` is
/// empty.
fn item_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InspectError::io(format!("cannot read {}", dir.display()))(e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(InspectError::io(format!("cannot read {}", dir.display())))?;
        // A file removed meanwhile, a directory (hold/, error/), a socket…: not an item.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !not_an_item(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .count()
        })
        .unwrap_or(0)
}

/// Read one entry of `dir` (headers only). `None` when the file vanished meanwhile.
fn read_entry(dir: &Path, name: &str, held: bool) -> Option<Entry> {
    match item::load(dir, name) {
        Ok(it) => Some(Entry::Item(ItemSummary::from_item(&it, held))),
        Err(LoadError::Gone) => None,
        Err(e) => Some(Entry::Corrupt {
            id: name.to_string(),
            corrupt: load_reason(&e),
            arrival_ms: QueueName::parse(name).map(|q| q.arrival),
        }),
    }
}

fn load_reason(e: &LoadError) -> String {
    match e {
        LoadError::Corrupt(c) => c.to_string(),
        other => other.to_string(),
    }
}

fn entries_in(dir: &Path, held: bool) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = item_names(dir)?
        .iter()
        .filter_map(|n| read_entry(dir, n, held))
        .collect();
    // Oldest first; files whose name says nothing about their age last.
    out.sort_by(|a, b| (a.arrival().is_none(), a.arrival(), a.id()).cmp(&(b.arrival().is_none(), b.arrival(), b.id())));
    Ok(out)
}

/// The items of the active queue (or of `hold/` with `held`) that match `filter`, oldest first.
/// Unreadable files are listed as [`Entry::Corrupt`] unless the filter needs their header.
pub fn list(dir: &Path, filter: &Filter, held: bool, now_ms: u64) -> Result<Vec<Entry>> {
    check_dir(dir)?;
    let from = if held { dir.join(HOLD_DIR) } else { dir.to_path_buf() };
    Ok(entries_in(&from, held)?
        .into_iter()
        .filter(|e| filter.matches_entry(e, now_ms))
        .collect())
}

/// One row of `stat`: a destination domain (or the total) with its items per age bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRow {
    pub domain: String,
    pub total: u64,
    /// Items per age bucket, in the order of [`AGE_LABELS`].
    pub buckets: Vec<u64>,
}

impl StatRow {
    fn new(domain: &str) -> StatRow {
        StatRow {
            domain: domain.to_string(),
            total: 0,
            buckets: vec![0; AGE_LABELS.len()],
        }
    }

    fn add(&mut self, bucket: usize) {
        self.total += 1;
        self.buckets[bucket] += 1;
    }
}

/// Counts of the queue by destination domain and age (like Postfix's qshape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub queue_dir: String,
    /// The bucket labels (`5m` = younger than 5 minutes, `10m` = 5 to 10 minutes, …).
    pub labels: Vec<String>,
    /// All readable items of the active queue.
    pub total: StatRow,
    /// Per destination domain, most items first.
    pub domains: Vec<StatRow>,
    /// Recipients of the readable items.
    pub recipients: u64,
    /// Message bytes of the readable items.
    pub bytes: u64,
    /// Files in the active queue that cannot be read (not in `total`).
    pub corrupt: u64,
    /// Files in `hold/` (not in `total`).
    pub held: u64,
    /// Files in `error/` and Haraka's `error.*` files (not in `total`).
    pub quarantined: u64,
}

/// Which age bucket an age (ms) falls in.
pub fn age_bucket(age_ms: u64) -> usize {
    AGE_BOUNDS_MIN
        .iter()
        .position(|&m| age_ms < m * 60_000)
        .unwrap_or(AGE_BOUNDS_MIN.len())
}

/// Count the active queue by destination domain and age.
pub fn stat(dir: &Path, now_ms: u64) -> Result<Stat> {
    check_dir(dir)?;
    let mut total = StatRow::new("TOTAL");
    let mut domains: Vec<StatRow> = Vec::new();
    let (mut recipients, mut bytes, mut corrupt) = (0u64, 0u64, 0u64);
    for e in entries_in(dir, false)? {
        match e {
            Entry::Item(s) => {
                let b = age_bucket(now_ms.saturating_sub(s.arrival_ms));
                total.add(b);
                recipients += s.recipients.len() as u64;
                bytes += s.size;
                match domains.iter_mut().find(|r| r.domain == s.domain) {
                    Some(r) => r.add(b),
                    None => {
                        let mut r = StatRow::new(&s.domain);
                        r.add(b);
                        domains.push(r);
                    }
                }
            }
            Entry::Corrupt { .. } => corrupt += 1,
        }
    }
    domains.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    let haraka_errors = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("error."))
                .count()
        })
        .unwrap_or(0);
    Ok(Stat {
        queue_dir: dir.display().to_string(),
        labels: AGE_LABELS.iter().map(|s| s.to_string()).collect(),
        total,
        domains,
        recipients,
        bytes,
        corrupt,
        held: count_files(&dir.join(HOLD_DIR)) as u64,
        quarantined: (count_files(&dir.join(ERROR_DIR)) + haraka_errors) as u64,
    })
}

/// Where an item is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub name: String,
    /// The directory holding it: the queue dir or its `hold/`.
    pub dir: PathBuf,
    pub held: bool,
}

impl Located {
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// Find an item by id (its file name; a path to it is accepted too), in the active queue first,
/// then in `hold/`.
pub fn locate(dir: &Path, id: &str) -> Result<Located> {
    check_dir(dir)?;
    let name = Path::new(id.trim())
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !not_an_item(n))
        .ok_or_else(|| InspectError::BadId(id.to_string()))?
        .to_string();
    for (d, held) in [(dir.to_path_buf(), false), (dir.join(HOLD_DIR), true)] {
        if fs::symlink_metadata(d.join(&name)).is_ok_and(|m| m.is_file()) {
            return Ok(Located { name, dir: d, held });
        }
    }
    Err(InspectError::UnknownId {
        id: id.to_string(),
        dir: dir.to_path_buf(),
    })
}

/// Everything `inspect` shows about one item.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub summary: ItemSummary,
    pub path: PathBuf,
    pub todo: Todo,
    /// The header section of the message (unstuffed, up to and without the blank line).
    pub headers: Vec<u8>,
    /// The whole message (unstuffed), when asked for.
    pub message: Option<Vec<u8>>,
}

fn load_located(loc: &Located) -> Result<QueueItem> {
    item::load(&loc.dir, &loc.name).map_err(|e| match e {
        LoadError::Gone => InspectError::UnknownId {
            id: loc.name.clone(),
            dir: loc.dir.clone(),
        },
        other => InspectError::Corrupt {
            id: loc.name.clone(),
            reason: load_reason(&other),
        },
    })
}

/// Read one item: its todo and its message headers (the whole message with `body`).
pub fn inspect(dir: &Path, id: &str, body: bool) -> Result<Inspection> {
    let loc = locate(dir, id)?;
    let it = load_located(&loc)?;
    let what = format!("cannot read {}", it.path.display());
    let mut headers = Vec::new();
    {
        let mut r = BufReader::new(item::open_body(&it).map_err(InspectError::io(what.clone()))?);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line).map_err(InspectError::io(what.clone()))?;
            if n == 0 || line == b"\r\n" || line == b"\n" {
                break;
            }
            if headers.len() + line.len() > MAX_HEADER_BYTES {
                break;
            }
            headers.extend_from_slice(&line);
        }
    }
    let headers = dsn::unstuff(&headers).into_owned();
    let message = if body {
        let raw = item::read_body(&it).map_err(InspectError::io(what))?;
        Some(dsn::unstuff(&raw).into_owned())
    } else {
        None
    };
    Ok(Inspection {
        summary: ItemSummary::from_item(&it, loc.held),
        path: it.path.clone(),
        todo: it.todo,
        headers,
        message,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(InspectError::io(format!("cannot sync {}", dir.display())))
}

/// Remove one item (from the queue or `hold/`) by id.
pub fn delete(dir: &Path, id: &str) -> Result<Located> {
    let loc = locate(dir, id)?;
    match fs::remove_file(loc.path()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InspectError::UnknownId {
                id: id.to_string(),
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(InspectError::io(format!("cannot remove {}", loc.path().display()))(e)),
    }
    sync_dir(&loc.dir)?;
    Ok(loc)
}

/// Remove every readable item of the active queue that matches `filter` (held and corrupt
/// files are kept). Returns the removed ids.
pub fn delete_matching(dir: &Path, filter: &Filter, now_ms: u64) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for e in list(dir, filter, false, now_ms)? {
        let Entry::Item(s) = e else { continue };
        match fs::remove_file(dir.join(&s.id)) {
            Ok(()) => removed.push(s.id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(InspectError::io(format!("cannot remove {}", s.id))(e)),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// What a flush did to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub old: String,
    /// The new name (the same as `old` when the item was due already).
    pub new: String,
}

fn flush_name(dir: &Path, name: &str, now_ms: u64) -> Result<Flushed> {
    let Some(mut q) = QueueName::parse(name) else {
        return Err(InspectError::Corrupt {
            id: name.to_string(),
            reason: "file name is not a queue name".into(),
        });
    };
    if q.next_attempt <= now_ms {
        return Ok(Flushed {
            old: name.to_string(),
            new: name.to_string(),
        });
    }
    q.next_attempt = now_ms;
    let new = q.to_string();
    if dir.join(&new).exists() {
        return Err(InspectError::Exists(new));
    }
    fs::rename(dir.join(name), dir.join(&new)).map_err(InspectError::io(format!("cannot rename {name}")))?;
    Ok(Flushed {
        old: name.to_string(),
        new,
    })
}

/// Make items due now: rename with `next_attempt` = now (attempts kept). Items already due keep
/// their name. Held items are refused.
pub fn flush_ids(dir: &Path, ids: &[String], now_ms: u64) -> Vec<(String, Result<Flushed>)> {
    let out: Vec<_> = ids
        .iter()
        .map(|id| {
            let r = locate(dir, id).and_then(|loc| {
                if loc.held {
                    return Err(InspectError::Held(loc.name));
                }
                flush_name(dir, &loc.name, now_ms)
            });
            (id.clone(), r)
        })
        .collect();
    let _ = sync_dir(dir);
    out
}

/// [`flush_ids`] for every readable item of the active queue that matches `filter`.
pub fn flush_matching(dir: &Path, filter: &Filter, now_ms: u64) -> Result<Vec<Flushed>> {
    let mut out = Vec::new();
    for e in list(dir, filter, false, now_ms)? {
        let Entry::Item(s) = e else { continue };
        out.push(flush_name(dir, &s.id, now_ms)?);
    }
    sync_dir(dir)?;
    Ok(out)
}

/// Move an item from the active queue to `hold/` (not scheduled until released).
pub fn hold(dir: &Path, id: &str) -> Result<Located> {
    let loc = locate(dir, id)?;
    if loc.held {
        return Err(InspectError::AlreadyHeld(loc.name));
    }
    let hold_dir = dir.join(HOLD_DIR);
    fs::create_dir_all(&hold_dir).map_err(InspectError::io(format!("cannot create {}", hold_dir.display())))?;
    fs::rename(loc.path(), hold_dir.join(&loc.name)).map_err(InspectError::io(format!("cannot hold {}", loc.name)))?;
    sync_dir(&hold_dir)?;
    sync_dir(dir)?;
    Ok(Located {
        name: loc.name,
        dir: hold_dir,
        held: true,
    })
}

/// Move a held item back to the active queue (its name, so its next attempt, is kept: an item
/// whose time has passed is due at once).
pub fn release(dir: &Path, id: &str) -> Result<Located> {
    let loc = locate(dir, id)?;
    if !loc.held {
        return Err(InspectError::NotHeld(loc.name));
    }
    if dir.join(&loc.name).exists() {
        return Err(InspectError::Exists(loc.name));
    }
    fs::rename(loc.path(), dir.join(&loc.name)).map_err(InspectError::io(format!("cannot release {}", loc.name)))?;
    sync_dir(dir)?;
    sync_dir(&loc.dir)?;
    Ok(Located {
        name: loc.name,
        dir: dir.to_path_buf(),
        held: false,
    })
}

/// What `bounce` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounced {
    /// A DSN was queued to `to` as these new items; the original was removed.
    Queued { to: String, dsn: Vec<String> },
    /// The original had the null sender: no DSN (a bounce is never bounced); it was removed.
    NullSender,
    /// No recipient asked for failure reports (NOTIFY=NEVER or without FAILURE); it was removed.
    NotRequested,
}

impl Bounced {
    /// The line the queue tools print for item `id`.
    pub fn describe(&self, id: &str) -> String {
        match self {
            Bounced::Queued { to, dsn } => format!("bounced {id}: DSN to <{to}> queued as {}", dsn.join(", ")),
            Bounced::NullSender => format!("bounced {id}: null sender, removed without a DSN"),
            Bounced::NotRequested => {
                format!("bounced {id}: no recipient asked for failure reports (NOTIFY), removed without a DSN")
            }
        }
    }
}

/// How to bounce.
#[derive(Debug, Clone)]
pub struct BounceOptions<'a> {
    /// The reason, written as `Diagnostic-Code: X-Posta; <reason>` and as the template's
    /// `{reason}`.
    pub reason: &'a str,
    /// This MTA's name (`Reporting-MTA`, `From: MAILER-DAEMON@<me>`, new file names).
    pub me: &'a str,
    /// `outbound.bounce_message`, or the built-in text.
    pub template: Option<&'a BounceTemplate>,
    pub now_ms: u64,
}

/// Fail every recipient of an item: queue an RFC 3464 DSN (Action failed, Status 5.0.0) from
/// `<>` to the original sender, durably, then remove the original. Recipients whose NOTIFY
/// excludes failures are left out of the report, as in delivery. Nothing is removed when the
/// DSN cannot be queued.
pub fn bounce(dir: &Path, id: &str, opts: &BounceOptions<'_>) -> Result<Bounced> {
    let loc = locate(dir, id)?;
    let spool = Spool::open(dir, opts.me, false).map_err(|e| InspectError::Bounce {
        id: loc.name.clone(),
        reason: format!("cannot open the queue: {e}"),
    })?;
    bounce_with(dir, id, opts, &spool)
}

/// [`bounce`] with the DSN committed through `spool` (the running daemon's own spool, which
/// holds the queue dir's lock).
pub fn bounce_with(dir: &Path, id: &str, opts: &BounceOptions<'_>, spool: &Spool) -> Result<Bounced> {
    let loc = locate(dir, id)?;
    let it = load_located(&loc)?;
    let outcome = if dsn::is_null_sender(&it.todo.mail_from) {
        Bounced::NullSender
    } else {
        let reports: Vec<RecipientReport> = it
            .todo
            .rcpt_to
            .iter()
            .filter(|a| dsn::rcpt_should_notify(a, DsnAction::Failed))
            .map(|a| {
                let mut r = RecipientReport::from_todo_address(a, DsnAction::Failed);
                r.status = "5.0.0".into();
                r.diagnostic = Some(Diagnostic::Other(opts.reason.to_string()));
                r.remote_mta = None;
                r.remote_ip = None;
                r.last_attempt = Some(opts.now_ms);
                r
            })
            .collect();
        if reports.is_empty() {
            Bounced::NotRequested
        } else {
            queue_dsn(spool, &it, &reports, opts)?
        }
    };
    item::remove(&it).map_err(InspectError::io(format!("cannot remove {}", it.path.display())))?;
    sync_dir(&loc.dir)?;
    Ok(outcome)
}

fn queue_dsn(spool: &Spool, it: &QueueItem, reports: &[RecipientReport], opts: &BounceOptions<'_>) -> Result<Bounced> {
    let fail = |reason: String| InspectError::Bounce {
        id: it.name.clone(),
        reason,
    };
    let from = &it.todo.mail_from;
    let (Some(user), Some(host)) = (
        from.user.clone().filter(|u| !u.is_empty()),
        from.original_host
            .clone()
            .or_else(|| from.host.clone())
            .filter(|h| !h.is_empty()),
    ) else {
        return Err(fail("the original sender has no address".into()));
    };
    let original = item::read_body(it).map_err(|e| fail(format!("cannot read the message: {e}")))?;
    let env = dsn::OriginalEnvelope::from_todo(&it.todo);
    let report_id = uuid::Uuid::new_v4().simple().to_string();
    let d = dsn::build_dsn(&dsn::DsnRequest {
        me: opts.me,
        envelope: &env,
        recipients: reports,
        original: &original,
        template: opts.template,
        reason: Some(opts.reason),
        now_ms: opts.now_ms,
        report_id: &report_id,
        pid: std::process::id(),
    });
    let req = CommitRequest {
        uuid: format!("{}.dsn.{report_id}", it.todo.uuid),
        mail_from: None,
        mail_params: MailParams {
            smtputf8: d.utf8_headers,
            body: d.eight_bit.then_some(Body::EightBitMime),
            ..Default::default()
        },
        rcpt_to: vec![Recipient {
            mailbox: Mailbox {
                local: user,
                domain: host,
            },
            params: Default::default(),
        }],
        notes: Default::default(),
        queue_time: opts.now_ms,
    };
    let to = req.rcpt_to[0].mailbox.to_string();
    let names = spool
        .commit(
            &req,
            &MessageBody {
                spooled: None,
                tail: d.message,
            },
        )
        .map_err(|e| fail(format!("{e:?}")))?;
    Ok(Bounced::Queued { to, dsn: names })
}

/// A todo address without angle brackets (`""` for the null sender).
fn bare(a: &TodoAddress) -> String {
    let o = a.original.trim();
    let o = o.strip_prefix('<').unwrap_or(o);
    let o = o.strip_suffix('>').unwrap_or(o);
    if o.is_empty() {
        if let (Some(u), Some(h)) = (&a.user, a.original_host.as_ref().or(a.host.as_ref())) {
            if !u.is_empty() {
                return format!("{u}@{h}");
            }
        }
    }
    o.to_string()
}

/// Parse a duration such as `90s`, `10m`, `2h`, `1d`, `1w` or `1h30m` into ms.
pub fn parse_duration(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let bad = || format!("bad duration {s:?}: use a number with a unit, e.g. 30s, 10m, 2h, 1d, 1w, 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// A short age: `42s`, `5m12s`, `2h03m`, `3d04h`.
pub fn fmt_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// When the next attempt is, relative to now: `now` when due, else `in 4m12s`.
pub fn fmt_next(next_ms: u64, now_ms: u64) -> String {
    if next_ms <= now_ms {
        "now".into()
    } else {
        format!("in {}", fmt_age(next_ms - now_ms))
    }
}

/// A time as `2025-05-15 09:06:40 UTC`.
pub fn fmt_time(ms: u64) -> String {
    use chrono::TimeZone;
    match chrono::Utc.timestamp_millis_opt(ms as i64) {
        chrono::LocalResult::Single(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        _ => format!("{ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::file::{decode, encode_header};

    const NOW: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn addr(s: &str) -> TodoAddress {
        let (l, d) = s.split_once('@').unwrap();
        TodoAddress::from_mailbox(Some(&Mailbox {
            local: l.into(),
            domain: d.into(),
        }))
    }

    fn todo(from: Option<&str>, rcpts: &[&str]) -> Todo {
        Todo {
            queue_time: NOW,
            domain: rcpts[0].split_once('@').unwrap().1.to_ascii_lowercase(),
            rcpt_to: rcpts.iter().map(|r| addr(r)).collect(),
            mail_from: from.map(addr).unwrap_or_else(|| TodoAddress::from_mailbox(None)),
            notes: Default::default(),
            uuid: "U.1.1".into(),
            force_tls: false,
            extra: Default::default(),
        }
    }

    fn name(age_min: u64, next_in_min: u64, attempts: u32, n: u32) -> String {
        QueueName {
            arrival: NOW - age_min * MIN,
            next_attempt: NOW + next_in_min * MIN,
            attempts,
            pid: 7,
            uid: "abcdef".into(),
            counter: n,
            host: "mx.test".into(),
        }
        .to_string()
    }

    fn write(dir: &Path, name: &str, t: &Todo) {
        let mut bytes = encode_header(t);
        bytes.extend_from_slice(b"Subject: hi\r\nFrom: a@x.org\r\n\r\n..dot line\r\nbody\r\n");
        fs::write(dir.join(name), bytes).unwrap();
    }

    /// Three good items (two domains, ages 1m, 30m, 2000m), one corrupt file, temp and
    /// recycled files, a quarantined file, a held item.
    fn queue() -> (tempfile::TempDir, Vec<String>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let names = vec![name(1, 0, 0, 1), name(30, 10, 2, 2), name(2000, 0, 5, 3)];
        write(p, &names[0], &todo(Some("s@x.org"), &["a@y.org", "b@Y.org"]));
        let mut t = todo(Some("other@z.org"), &["c@y.org"]);
        t.rcpt_to[0].extra.insert("dsn_status".into(), "4.4.1".into());
        t.rcpt_to[0].extra.insert("reason".into(), "connection refused".into());
        write(p, &names[1], &t);
        write(p, &names[2], &todo(None, &["d@w.org"]));
        fs::write(p.join(name(3, 0, 0, 4)), b"\0\0\0\x50{}").unwrap();
        fs::write(p.join("__tmp__.free.1.0"), b"x").unwrap();
        fs::write(p.join("__tmp__.something"), b"x").unwrap();
        fs::write(p.join("error.1_1_0_1_x_1_h"), b"x").unwrap();
        fs::create_dir(p.join(ERROR_DIR)).unwrap();
        fs::write(p.join(ERROR_DIR).join("junk"), b"x").unwrap();
        fs::create_dir(p.join(HOLD_DIR)).unwrap();
        write(
            &p.join(HOLD_DIR),
            &name(5, 0, 0, 9),
            &todo(Some("h@x.org"), &["e@v.org"]),
        );
        (d, names)
    }

    #[test]
    fn list_reads_items_and_reports_corrupt_files() {
        let (d, names) = queue();
        let all = list(d.path(), &Filter::default(), false, NOW).unwrap();
        let ids: Vec<&str> = all.iter().map(Entry::id).collect();
        // Oldest first; the corrupt file sorts by its name's arrival.
        assert_eq!(ids, [&names[2][..], &names[1], &name(3, 0, 0, 4), &names[0]]);
        let Entry::Item(s) = &all[1] else { panic!() };
        assert_eq!(s.sender, "other@z.org");
        assert_eq!(s.attempts, 2);
        assert_eq!(s.last_error().as_deref(), Some("4.4.1 connection refused"));
        let r = RcptInfo {
            address: "a@b".into(),
            status: Some("4.2.2".into()),
            reason: Some("452 4.2.2 Mailbox full".into()),
        };
        assert_eq!(r.error().as_deref(), Some("452 4.2.2 Mailbox full"));
        assert!(matches!(&all[2], Entry::Corrupt { corrupt, .. } if corrupt.contains("runs past the end")));
        let Entry::Item(s) = &all[0] else { panic!() };
        assert_eq!(s.sender, "");
        assert_eq!(s.last_error(), None);

        let held = list(d.path(), &Filter::default(), true, NOW).unwrap();
        assert_eq!(held.len(), 1);
        assert!(matches!(&held[0], Entry::Item(s) if s.held));
    }

    #[test]
    fn filters() {
        let (d, names) = queue();
        let ids = |f: Filter| -> Vec<String> {
            list(d.path(), &f, false, NOW)
                .unwrap()
                .iter()
                .map(|e| e.id().to_string())
                .collect()
        };
        let want = |xs: &[&String]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dom = |s: &str| Filter {
            domain: Some(s.into()),
            ..Default::default()
        };
        let snd = |s: &str| Filter {
            sender: Some(s.into()),
            ..Default::default()
        };
        assert_eq!(ids(dom("Y.ORG")), want(&[&names[1], &names[0]]));
        assert_eq!(ids(dom("w.org")), want(&[&names[2]]));
        assert_eq!(ids(snd("S@x.org")), want(&[&names[0]]));
        assert_eq!(ids(snd("z.org")), want(&[&names[1]]));
        assert_eq!(ids(snd("@z.org")), want(&[&names[1]]));
        assert_eq!(ids(snd("<>")), want(&[&names[2]]));
        let old = Filter {
            older_than_ms: Some(10 * MIN),
            ..Default::default()
        };
        assert_eq!(ids(old), want(&[&names[2], &names[1]]));
        let old = Filter {
            older_than_ms: Some(2 * MIN),
            ..Default::default()
        };
        assert_eq!(ids(old), want(&[&names[2], &names[1], &name(3, 0, 0, 4)]));
    }

    #[test]
    fn stat_counts_by_domain_and_age() {
        let (d, _) = queue();
        let s = stat(d.path(), NOW).unwrap();
        assert_eq!(s.total.total, 3);
        assert_eq!(s.total.buckets, [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.domains[0].domain, "y.org");
        assert_eq!(s.domains[0].total, 2);
        assert_eq!(s.domains[1].domain, "w.org");
        assert_eq!(s.domains[1].buckets[9], 1);
        assert_eq!((s.corrupt, s.held, s.quarantined, s.recipients), (1, 1, 2, 4));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["total"]["total"], 3);
        assert_eq!(json["labels"][9], "1280m+");
    }

    #[test]
    fn age_buckets() {
        assert_eq!(age_bucket(0), 0);
        assert_eq!(age_bucket(5 * MIN - 1), 0);
        assert_eq!(age_bucket(5 * MIN), 1);
        assert_eq!(age_bucket(1279 * MIN), 8);
        assert_eq!(age_bucket(1280 * MIN), 9);
        assert_eq!(age_bucket(u64::MAX), 9);
    }

    #[test]
    fn missing_dir_and_unknown_ids() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("nope");
        assert!(matches!(stat(&gone, NOW), Err(InspectError::NoQueueDir(_))));
        assert!(matches!(
            list(&gone, &Filter::default(), false, NOW),
            Err(InspectError::NoQueueDir(_))
        ));
        fs::write(d.path().join("f"), b"").unwrap();
        assert!(matches!(stat(&d.path().join("f"), NOW), Err(InspectError::NotADir(_))));
        let (q, _) = queue();
        assert!(matches!(
            inspect(q.path(), "1_1_0_1_x_1_h", false),
            Err(InspectError::UnknownId { .. })
        ));
        assert!(matches!(delete(q.path(), ".."), Err(InspectError::BadId(_))));
        assert!(matches!(
            delete(q.path(), "__tmp__.something"),
            Err(InspectError::BadId(_))
        ));
        assert!(matches!(
            inspect(q.path(), &name(3, 0, 0, 4), false),
            Err(InspectError::Corrupt { .. })
        ));
    }

    #[test]
    fn inspect_shows_headers_and_body() {
        let (d, names) = queue();
        let i = inspect(d.path(), &names[1], false).unwrap();
        assert_eq!(i.headers, b"Subject: hi\r\nFrom: a@x.org\r\n");
        assert_eq!(i.message, None);
        assert_eq!(i.todo.rcpt_to.len(), 1);
        // A path to the file works too.
        let p = d.path().join(&names[1]).display().to_string();
        let i = inspect(d.path(), &p, true).unwrap();
        assert_eq!(
            i.message.as_deref(),
            Some(&b"Subject: hi\r\nFrom: a@x.org\r\n\r\n.dot line\r\nbody\r\n"[..])
        );
        // Held items can be inspected.
        let i = inspect(d.path(), &name(5, 0, 0, 9), false).unwrap();
        assert!(i.summary.held);
    }

    #[test]
    fn delete_flush_hold_release() {
        let (d, names) = queue();
        let p = d.path();
        delete(p, &names[0]).unwrap();
        assert!(!p.join(&names[0]).exists());
        assert!(matches!(delete(p, &names[0]), Err(InspectError::UnknownId { .. })));

        // Flush: names[1] is due in 10 minutes.
        let r = flush_ids(p, std::slice::from_ref(&names[1]), NOW);
        let f = r[0].1.as_ref().unwrap();
        let q = QueueName::parse(&f.new).unwrap();
        assert_eq!((q.next_attempt, q.attempts), (NOW, 2));
        assert!(p.join(&f.new).exists() && !p.join(&names[1]).exists());
        // Already due: unchanged.
        let r = flush_ids(p, std::slice::from_ref(&names[2]), NOW);
        assert_eq!(r[0].1.as_ref().unwrap().new, names[2]);

        // Hold / release; the daemon's scan does not see held items.
        let held = hold(p, &names[2]).unwrap();
        assert!(held.path().exists() && !p.join(&names[2]).exists());
        assert!(!item::scan(p).unwrap().0.iter().any(|(n, _)| n == &names[2]));
        assert!(matches!(hold(p, &names[2]), Err(InspectError::AlreadyHeld(_))));
        let r = flush_ids(p, std::slice::from_ref(&names[2]), NOW);
        assert!(matches!(r[0].1, Err(InspectError::Held(_))));
        release(p, &names[2]).unwrap();
        assert!(p.join(&names[2]).exists());
        assert!(item::scan(p).unwrap().0.iter().any(|(n, _)| n == &names[2]));
        assert!(matches!(release(p, &names[2]), Err(InspectError::NotHeld(_))));

        // Delete by domain: only readable active items of that domain.
        let removed = delete_matching(
            p,
            &Filter {
                domain: Some("w.org".into()),
                ..Default::default()
            },
            NOW,
        )
        .unwrap();
        assert_eq!(removed, [names[2].clone()]);
        let left = list(p, &Filter::default(), false, NOW).unwrap();
        assert_eq!(left.len(), 2); // the flushed y.org item and the corrupt file
    }

    #[test]
    fn flush_matching_by_domain() {
        let (d, names) = queue();
        let done = flush_matching(
            d.path(),
            &Filter {
                domain: Some("y.org".into()),
                ..Default::default()
            },
            NOW,
        )
        .unwrap();
        assert_eq!(done.len(), 2);
        assert!(done.iter().any(|f| f.old == names[1] && f.new != names[1]));
        assert!(done.iter().any(|f| f.old == names[0] && f.new == names[0]));
    }

    #[test]
    fn bounce_queues_a_dsn_and_removes_the_original() {
        let (d, names) = queue();
        let p = d.path();
        let opts = BounceOptions {
            reason: "removed by the postmaster",
            me: "mx.test",
            template: None,
            now_ms: NOW,
        };
        let Bounced::Queued { to, dsn } = bounce(p, &names[1], &opts).unwrap() else {
            panic!()
        };
        assert_eq!(to, "other@z.org");
        assert!(!p.join(&names[1]).exists());
        assert_eq!(dsn.len(), 1);
        let bytes = fs::read(p.join(&dsn[0])).unwrap();
        let (t, msg) = decode(&bytes).unwrap();
        assert_eq!(t.mail_from.original, "<>");
        assert_eq!(t.rcpt_to[0].original, "<other@z.org>");
        let msg = String::from_utf8_lossy(msg);
        assert!(msg.contains("Action: failed"), "{msg}");
        assert!(msg.contains("Status: 5.0.0"), "{msg}");
        assert!(
            msg.contains("Diagnostic-Code: X-Posta; removed by the postmaster"),
            "{msg}"
        );
        assert!(msg.contains("Final-Recipient: rfc822; c@y.org"), "{msg}");
        // The temp and recycled files were not touched into items.
        assert!(item::scan(p)
            .unwrap()
            .0
            .iter()
            .all(|(n, _)| QueueName::parse(n).is_some()));

        // A bounce with the null sender is dropped without a DSN.
        assert_eq!(bounce(p, &names[2], &opts).unwrap(), Bounced::NullSender);
        assert!(!p.join(&names[2]).exists());

        // NOTIFY=NEVER: no DSN.
        let mut t = todo(Some("s@x.org"), &["n@y.org"]);
        t.rcpt_to[0]
            .extra
            .insert("dsn_notify".into(), serde_json::json!(["NEVER"]));
        let n = name(1, 0, 0, 77);
        write(p, &n, &t);
        assert_eq!(bounce(p, &n, &opts).unwrap(), Bounced::NotRequested);
        assert!(!p.join(&n).exists());
    }

    #[test]
    fn durations_and_formats() {
        assert_eq!(parse_duration("10m"), Ok(10 * MIN));
        assert_eq!(parse_duration("1h30m"), Ok(90 * MIN));
        assert_eq!(parse_duration("2d"), Ok(2 * 86_400_000));
        assert_eq!(parse_duration("45s"), Ok(45_000));
        assert_eq!(parse_duration("1w"), Ok(7 * 86_400_000));
        for bad in ["", "10", "m", "10x", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_age(42_000), "42s");
        assert_eq!(fmt_age(312_000), "5m12s");
        assert_eq!(fmt_age(2 * 3_600_000 + 3 * MIN), "2h03m");
        assert_eq!(fmt_age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(fmt_next(NOW, NOW), "now");
        assert_eq!(fmt_next(NOW + 5 * MIN, NOW), "in 5m00s");
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00 UTC");
    }
}
