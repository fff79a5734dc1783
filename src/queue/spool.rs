//! The durable queue commit: write each queue file under a temp name, fsync it, rename it into
//! place, then fsync the directory (shared between concurrent commits: group commit).
//!
//! Only after all of that does the session answer `250`. Every error removes what this commit
//! wrote, so a failed commit leaves no half message behind.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::Value;

use super::file::{encode_header, QueueName, Todo, TodoAddress};
use crate::hooks::state::{now_ms, Notes, Recipient};
use crate::protocol::address::Mailbox;
use crate::protocol::command::MailParams;
use crate::protocol::session::CommitError;

/// Prefix of files being written; such files are removed at start (Haraka does the same).
pub const TMP_PREFIX: &str = "__tmp__.";

/// The lock file that keeps a second process out of a queue dir.
pub const LOCK_FILE: &str = ".lock";

/// The transaction note that marks a DSN posta generated (routes may claim it).
pub const BOUNCE_NOTE: &str = "bounce";

/// Marks recycled files (`__tmp__.free.*`), kept at start for reuse.
const FREE_MARK: &str = "free.";

/// Recycled files kept at most.
const FREE_POOL_MAX: usize = 4096;

/// The envelope of a message to commit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub uuid: String,
    pub mail_from: Option<Mailbox>,
    pub mail_params: MailParams,
    pub rcpt_to: Vec<Recipient>,
    pub notes: Notes,
    pub queue_time: u64,
}

/// Where the stored form of the message is: a spooled prefix on disk (large messages) and
/// the rest in memory.
#[derive(Debug, Default)]
pub struct MessageBody {
    pub spooled: Option<PathBuf>,
    pub tail: Vec<u8>,
}

/// The queue directory and its commit machinery.
pub struct Spool {
    dir: PathBuf,
    dir_sync: GroupSync,
    me: String,
    uid: String,
    names: Mutex<NameClock>,
    no_fsync: bool,
    /// Recycled queue files, oldest first, each with the directory-fsync generation that makes
    /// its recycling rename durable: it is overwritten only after that fsync has finished.
    free: Mutex<VecDeque<(PathBuf, u64)>>,
    free_seq: std::sync::atomic::AtomicU64,
    /// `outbound.ini always_split`: one queue file per recipient.
    always_split: bool,
    /// Held for the life of the spool: the `.lock` file's exclusive lock.
    _lock: File,
}

impl Spool {
    /// Open (create) the queue directory and remove temp files left by a crash.
    pub fn open(dir: &Path, me: &str, no_fsync: bool) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        // One process per queue dir: a second one would delete the first one's temp files
        // and share its recycled files.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the queue directory is in use by another posta process",
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let (removed, free) = remove_temp_files(dir)?;
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed temp files left by an interrupted write");
        }
        if no_fsync {
            tracing::warn!("queue no_fsync is on: accepted mail can be lost on a crash (benchmarks only)");
        }
        let uid: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(6)
            .map(char::from)
            .collect();
        Ok(Spool {
            dir: dir.to_path_buf(),
            dir_sync: GroupSync::new(dir)?,
            me: me.to_string(),
            uid,
            names: Mutex::new(NameClock::default()),
            no_fsync,
            // Found on disk at start: durable once the first directory fsync has run.
            free: Mutex::new(free.into_iter().map(|p| (p, 1)).collect()),
            free_seq: std::sync::atomic::AtomicU64::new(0),
            always_split: false,
            _lock: lock,
        })
    }

    /// `outbound.ini always_split`: one queue file per recipient instead of per domain.
    pub fn with_always_split(mut self, on: bool) -> Self {
        self.always_split = on;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh path for spooling a large body before commit.
    pub fn body_path(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{TMP_PREFIX}{uuid}.body"))
    }

    fn next_name(&self, now: u64) -> QueueName {
        let (ms, counter) = self.names.lock().unwrap_or_else(|p| p.into_inner()).next(now);
        QueueName {
            arrival: ms,
            next_attempt: ms,
            attempts: 0,
            pid: std::process::id(),
            uid: self.uid.clone(),
            counter,
            host: self.me.clone(),
        }
    }

    /// Commit a message: one queue file per recipient domain. Blocking; run it on a blocking
    /// thread. Returns the queue file names.
    pub fn commit(&self, req: &CommitRequest, body: &MessageBody) -> Result<Vec<String>, CommitError> {
        let mut written: Vec<PathBuf> = Vec::new();
        let result = self.write_all(req, body, &mut written);
        let result = result.and_then(|names| {
            if self.no_fsync {
                Ok(names)
            } else {
                self.dir_sync.sync().map(|_| names)
            }
        });
        result.map_err(|e| {
            for p in &written {
                let _ = fs::remove_file(p);
            }
            tracing::error!(uuid = %req.uuid, error = %e, "queue commit failed");
            commit_error(&e)
        })
    }

    fn write_all(
        &self,
        req: &CommitRequest,
        body: &MessageBody,
        written: &mut Vec<PathBuf>,
    ) -> io::Result<Vec<String>> {
        let now = now_ms();
        let mut names = Vec::new();
        let groups = if self.always_split {
            req.rcpt_to.iter().map(|r| (r.mailbox.host(), vec![r])).collect()
        } else {
            split_by_domain(&req.rcpt_to)
        };
        for (k, (domain, rcpts)) in groups.into_iter().enumerate() {
            let todo = build_todo(req, &domain, &rcpts, k + 1);
            let name = self.next_name(now).to_string();
            let (file, tmp) = self.take_file(&name)?;
            written.push(tmp.clone());
            self.write_file(file, &todo, body)?;
            let dest = self.dir.join(&name);
            fs::rename(&tmp, &dest)?;
            written.pop();
            written.push(dest);
            names.push(name);
        }
        Ok(names)
    }

    /// A file to write a new queue file into: a recycled one when there is one whose recycling
    /// is durable (no inode allocation, see [`Spool::recycle`]), else a new `__tmp__.<name>`.
    ///
    /// Why wait for durability: until the rename `<old item> -> __tmp__.free.*` is on disk, a
    /// crash can bring the old item's name back, and it would then name the new content.
    fn take_file(&self, name: &str) -> io::Result<(File, PathBuf)> {
        let recycled = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let state = match free.front() {
                    None => break None,
                    Some(_) if self.no_fsync => Some(true),
                    Some((_, generation)) => self.dir_sync.result(*generation),
                };
                match state {
                    Some(true) => break free.pop_front(),
                    // Its rename may not be on disk: never overwrite it (it stays a free file
                    // on disk, found again at the next start).
                    Some(false) => {
                        free.pop_front();
                    }
                    None => break None,
                }
            }
        };
        if let Some((path, _)) = recycled {
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                return Ok((f, path));
            }
        }
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        Ok((OpenOptions::new().write(true).create_new(true).open(&tmp)?, tmp))
    }

    /// Keep the file of a finished queue item for reuse instead of unlinking it.
    ///
    /// Why: creating and deleting one inode per message is the most expensive part of a
    /// queue on ext4 (inode allocation skips recently deleted inodes, a scan that grows with
    /// the delete rate). A finished file is renamed to `__tmp__.free.<pid>.<n>`: that name is
    /// never a queue item (Haraka and posta ignore `__tmp__` names), and the next commit
    /// overwrites and truncates it. Past `FREE_POOL_MAX` files it is unlinked.
    pub fn recycle(&self, path: &Path) -> io::Result<()> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() >= FREE_POOL_MAX {
            drop(free);
            return match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let n = self.free_seq.fetch_add(1, Ordering::Relaxed);
        let dest = self.dir.join(format!(
            "{TMP_PREFIX}{FREE_MARK}{}.{}.{n}",
            std::process::id(),
            self.uid
        ));
        match fs::rename(path, &dest) {
            Ok(()) => {
                free.push_back((dest, self.dir_sync.covering_generation()));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn write_file(&self, mut f: File, todo: &Todo, body: &MessageBody) -> io::Result<()> {
        let header = encode_header(todo);
        if let Some(spooled) = &body.spooled {
            f.write_all(&header)?;
            io::copy(&mut File::open(spooled)?, &mut f)?;
            f.write_all(&body.tail)?;
        } else {
            // One write for the common small message.
            let mut all = header;
            all.extend_from_slice(&body.tail);
            f.write_all(&all)?;
        }
        // A recycled file may be longer than what was just written.
        let end = f.stream_position()?;
        if f.metadata()?.len() > end {
            f.set_len(end)?;
        }
        if !self.no_fsync {
            f.sync_data()?;
        }
        Ok(())
    }
}

/// Unique (milliseconds, counter) pairs for new queue file names. Haraka's names carry a
/// counter below 10,000; past 10,000 names in one millisecond (one message with that many
/// recipients under `always_split`) the clock moves on a millisecond rather than repeat a
/// name, because the commit's rename would replace the earlier file.
#[derive(Default)]
struct NameClock {
    ms: u64,
    counter: u32,
}

impl NameClock {
    const COUNTER_LIMIT: u32 = 10_000;

    fn next(&mut self, now: u64) -> (u64, u32) {
        if now > self.ms {
            (self.ms, self.counter) = (now, 0);
        } else if self.counter >= Self::COUNTER_LIMIT {
            (self.ms, self.counter) = (self.ms + 1, 0);
        }
        self.counter += 1;
        (self.ms, self.counter - 1)
    }
}

/// Group recipients by lower-cased domain, in first-seen order (Haraka splits per domain).
fn split_by_domain(rcpts: &[Recipient]) -> Vec<(String, Vec<&Recipient>)> {
    let mut groups: Vec<(String, Vec<&Recipient>)> = Vec::new();
    for r in rcpts {
        let host = r.mailbox.host();
        match groups.iter_mut().find(|(d, _)| *d == host) {
            Some((_, v)) => v.push(r),
            None => groups.push((host, vec![r])),
        }
    }
    groups
}

fn build_todo(req: &CommitRequest, domain: &str, rcpts: &[&Recipient], k: usize) -> Todo {
    let rcpt_to = rcpts
        .iter()
        .map(|r| {
            let mut a = TodoAddress::from_mailbox(Some(&r.mailbox));
            if let Some(n) = &r.params.notify {
                a.extra.insert("dsn_notify".into(), Value::from(n.keywords()));
            }
            if let Some(o) = &r.params.orcpt {
                a.extra.insert("dsn_orcpt".into(), Value::from(o.clone()));
            }
            a
        })
        .collect();
    let mut extra = serde_json::Map::new();
    let p = &req.mail_params;
    if let Some(ret) = p.ret {
        extra.insert("dsn_ret".into(), serde_json::to_value(ret).unwrap_or(Value::Null));
    }
    if let Some(envid) = &p.envid {
        extra.insert("dsn_envid".into(), Value::from(envid.clone()));
    }
    if let Some(b) = p.body {
        extra.insert("body".into(), serde_json::to_value(b).unwrap_or(Value::Null));
    }
    if p.smtputf8 {
        extra.insert("smtputf8".into(), Value::Bool(true));
    }
    Todo {
        queue_time: req.queue_time,
        domain: domain.to_string(),
        rcpt_to,
        mail_from: TodoAddress::from_mailbox(req.mail_from.as_ref()),
        notes: req.notes.clone(),
        uuid: format!("{}.{k}", req.uuid),
        force_tls: false,
        extra,
    }
}

/// ENOSPC and EDQUOT answer `452 4.3.1`; everything else `451 4.3.0`.
pub(crate) fn commit_error(e: &io::Error) -> CommitError {
    let full = e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122));
    if full {
        CommitError::DiskFull
    } else {
        CommitError::Temporary(e.to_string())
    }
}

/// Remove `__tmp__.*` files left by an interrupted write; keep recycled ones for reuse.
/// Returns how many were removed and the recycled files.
pub fn remove_temp_files(dir: &Path) -> io::Result<(usize, Vec<PathBuf>)> {
    let mut n = 0;
    let mut free = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
            continue;
        };
        if rest.starts_with(FREE_MARK) && free.len() < FREE_POOL_MAX {
            free.push(entry.path());
        } else {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok((n, free))
}

/// Directory fsync shared by concurrent committers: each caller waits until an fsync that
/// *started after* its rename has finished; one caller runs it for everyone waiting.
pub struct GroupSync {
    dir: File,
    state: Mutex<SyncState>,
    cv: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Generation of the next fsync to start.
    next: u64,
    /// Highest generation finished (successfully or not).
    done: u64,
    /// Recent generations whose fsync failed, with the OS error code.
    failed: VecDeque<(u64, Option<i32>)>,
    /// The highest failed generation dropped from `failed`: results up to it are unknown.
    forgotten: u64,
    running: bool,
    /// Callers waiting for someone else's fsync (for tests).
    waiting: usize,
}

/// Failed generations remembered; a waiter reads its result right after being woken.
const FAILED_KEPT: usize = 64;

impl SyncState {
    fn finish(&mut self, generation: u64, result: &io::Result<()>) {
        self.done = self.done.max(generation);
        match result {
            Ok(()) => {}
            Err(e) => {
                if self.failed.len() >= FAILED_KEPT {
                    if let Some((g, _)) = self.failed.pop_front() {
                        self.forgotten = self.forgotten.max(g);
                    }
                }
                self.failed.push_back((generation, e.raw_os_error()));
            }
        }
    }

    /// Whether the fsync of `generation` succeeded: `None` while it has not finished;
    /// `Some(false)` when it failed, or when that is no longer known (counted as failed).
    fn result(&self, generation: u64) -> Option<bool> {
        if self.done < generation {
            return None;
        }
        let failed = generation <= self.forgotten || self.failed.iter().any(|(g, _)| *g == generation);
        Some(!failed)
    }

    /// The result of the fsync of `generation` (finished), as the caller's `io::Result`.
    fn outcome(&self, generation: u64) -> io::Result<()> {
        match self.result(generation) {
            Some(true) => Ok(()),
            _ => match self.failed.iter().find(|(g, _)| *g == generation) {
                Some((_, Some(code))) => Err(io::Error::from_raw_os_error(*code)),
                _ => Err(io::Error::other("directory fsync failed")),
            },
        }
    }
}

impl GroupSync {
    pub fn new(dir: &Path) -> io::Result<GroupSync> {
        Ok(GroupSync {
            dir: File::open(dir)?,
            state: Mutex::new(SyncState {
                next: 1,
                ..Default::default()
            }),
            cv: Condvar::new(),
        })
    }

    /// The generation of the first fsync that will cover a rename done now.
    pub fn covering_generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).next
    }

    /// Whether the fsync of `generation` made the renames it covered durable: `None` while it
    /// has not finished, `Some(false)` when it failed (a later success does not cover them).
    pub fn result(&self, generation: u64) -> Option<bool> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).result(generation)
    }

    /// Whether the fsync of `generation` has finished and succeeded.
    pub fn is_durable(&self, generation: u64) -> bool {
        self.result(generation) == Some(true)
    }

    /// Make every rename done before this call durable.
    pub fn sync(&self) -> io::Result<()> {
        self.sync_by(|| self.dir.sync_all())
    }

    /// [`GroupSync::sync`] with the fsync given (tests inject failures).
    ///
    /// The first fsync that starts after this call covers our rename (a running one may not);
    /// its generation is the `next` seen now, and its result is ours. A failed fsync fails
    /// every caller it covered: a later fsync may report success although the directory
    /// blocks of the failed one never reached the disk (Linux clears the error once reported).
    fn sync_by(&self, fsync: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let need = st.next;
        loop {
            if st.done >= need {
                return st.outcome(need);
            }
            if !st.running {
                st.running = true;
                let generation = st.next;
                st.next += 1;
                drop(st);
                let r = fsync();
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.running = false;
                st.finish(generation, &r);
                self.cv.notify_all();
                debug_assert_eq!(generation, need);
                return r;
            }
            st.waiting += 1;
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiting -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::file::decode;

    fn rcpt(s: &str) -> Recipient {
        let (l, d) = s.split_once('@').unwrap();
        Recipient {
            mailbox: Mailbox {
                local: l.into(),
                domain: d.into(),
            },
            params: Default::default(),
        }
    }

    #[test]
    fn commit_writes_one_file_per_domain() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("__tmp__.left"), b"x").unwrap();
        let spool = Spool::open(dir.path(), "mx.test", false).unwrap();
        assert!(!dir.path().join("__tmp__.left").exists());
        let req = CommitRequest {
            uuid: "U.1".into(),
            mail_from: None,
            mail_params: Default::default(),
            rcpt_to: vec![rcpt("a@x.org"), rcpt("b@y.org"), rcpt("c@X.org")],
            notes: Notes::new(),
            queue_time: 5,
        };
        let body = MessageBody {
            spooled: None,
            tail: b"Subject: t\r\n\r\nhi\r\n".to_vec(),
        };
        let names = spool.commit(&req, &body).unwrap();
        assert_eq!(names.len(), 2);
        let bytes = std::fs::read(dir.path().join(&names[0])).unwrap();
        let (todo, msg) = decode(&bytes).unwrap();
        assert_eq!(todo.domain, "x.org");
        assert_eq!(todo.rcpt_to.len(), 2);
        assert_eq!(todo.uuid, "U.1.1");
        assert_eq!(msg, b"Subject: t\r\n\r\nhi\r\n");
    }

    fn free_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("__tmp__.free.")
            })
            .count()
    }

    #[test]
    fn a_recycled_file_is_reused_only_after_its_rename_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "mx.test", false).unwrap();
        let req = CommitRequest {
            uuid: "U.1".into(),
            mail_from: None,
            mail_params: Default::default(),
            rcpt_to: vec![rcpt("a@x.org")],
            notes: Notes::new(),
            queue_time: 5,
        };
        let body = || MessageBody {
            spooled: None,
            tail: b"Subject: t\r\n\r\nhi\r\n".to_vec(),
        };
        let first = spool.commit(&req, &body()).unwrap();
        spool.recycle(&dir.path().join(&first[0])).unwrap();
        assert_eq!(free_files(dir.path()), 1);
        // No directory fsync since the recycling rename: a new file, the free one stays.
        let second = spool.commit(&req, &body()).unwrap();
        assert_eq!(free_files(dir.path()), 1, "reused before the rename was durable");
        // The second commit's directory fsync covered it: now it is reused.
        let third = spool.commit(&req, &body()).unwrap();
        assert_eq!(free_files(dir.path()), 0);
        for n in second.iter().chain(&third) {
            let bytes = std::fs::read(dir.path().join(n)).unwrap();
            let (todo, msg) = decode(&bytes).unwrap();
            assert_eq!((todo.domain.as_str(), msg), ("x.org", &b"Subject: t\r\n\r\nhi\r\n"[..]));
        }
    }

    #[test]
    fn names_never_repeat_past_ten_thousand_in_one_millisecond() {
        let mut clock = NameClock::default();
        let names: std::collections::HashSet<(u64, u32)> = (0..25_000).map(|_| clock.next(7)).collect();
        assert_eq!(names.len(), 25_000);
        assert!(names.iter().all(|&(ms, c)| (7..=9).contains(&ms) && c < 10_000));
        // A clock that went back (or stood still) never reuses a pair either.
        assert_eq!(clock.next(5), (9, 5_000));
        assert_eq!(clock.next(100), (100, 0));
    }

    #[test]
    fn a_failed_directory_fsync_fails_every_commit_it_covered() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let g = std::sync::Arc::new(GroupSync::new(dir.path()).unwrap());
        // Thread A's fsync (generation 1) blocks until released; B and C arrive meanwhile and
        // both need generation 2, which fails; any later fsync would succeed.
        let (release, blocked) = mpsc::channel::<()>();
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let fsync = {
            let calls = calls.clone();
            let blocked = std::sync::Mutex::new(blocked);
            move || match calls.fetch_add(1, Ordering::SeqCst) {
                0 => {
                    blocked.lock().unwrap().recv().unwrap();
                    Ok(())
                }
                1 => Err(io::Error::from_raw_os_error(5)),
                _ => Ok(()),
            }
        };
        type Fsync = std::sync::Arc<dyn Fn() -> io::Result<()> + Send + Sync>;
        let fsync: Fsync = std::sync::Arc::new(fsync);
        let run = |g: &std::sync::Arc<GroupSync>, f: &Fsync| {
            let (g, f) = (g.clone(), f.clone());
            std::thread::spawn(move || g.sync_by(|| f()))
        };
        let a = run(&g, &fsync);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < until, "A's fsync never started");
            std::thread::yield_now();
        }
        let b = run(&g, &fsync);
        let c = run(&g, &fsync);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while g.state.lock().unwrap().waiting < 2 {
            assert!(std::time::Instant::now() < until, "B and C never waited for A's fsync");
            std::thread::yield_now();
        }
        release.send(()).unwrap();
        assert!(a.join().unwrap().is_ok());
        for t in [b, c] {
            let e = t.join().unwrap().expect_err("covered by the failed fsync");
            assert_eq!(e.raw_os_error(), Some(5));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "no caller ran a third fsync to hide the failure"
        );
        assert!(!g.is_durable(2));
        // The next caller gets a new fsync, which succeeds; generation 2 stays failed.
        assert!(g.sync_by(|| fsync()).is_ok());
        assert!(g.is_durable(1) && !g.is_durable(2) && g.is_durable(3));
        assert_eq!((g.result(2), g.result(4)), (Some(false), None));
    }

    #[test]
    fn a_forgotten_failure_still_counts_as_failed() {
        let mut st = SyncState::default();
        let eio = Err(io::Error::from_raw_os_error(5));
        for g in 1..=(FAILED_KEPT as u64 + 1) {
            st.finish(g, &eio);
        }
        st.finish(FAILED_KEPT as u64 + 2, &Ok(()));
        // Generation 1 left the list: unknown, so failed; the last one succeeded.
        assert_eq!(st.result(1), Some(false));
        assert!(st.outcome(1).is_err());
        assert_eq!(st.result(FAILED_KEPT as u64 + 2), Some(true));
        assert_eq!(st.result(FAILED_KEPT as u64 + 3), None);
    }

    #[test]
    fn group_sync_from_many_threads() {
        let dir = tempfile::tempdir().unwrap();
        let g = std::sync::Arc::new(GroupSync::new(dir.path()).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20).for_each(|_| g.sync().unwrap()))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
