//! `posta queue …` (offline mode): run the real binary on a queue dir built with the real commit
//! code, and check its output and what it did to the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use posta::hooks::state::{now_ms, Notes, Recipient};
use posta::protocol::address::Mailbox;
use posta::queue::file::{decode, QueueName};
use posta::queue::item;
use posta::queue::spool::{CommitRequest, MessageBody, Spool};
use serde_json::Value;

const MIN: u64 = 60_000;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn posta(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_posta")).args(args).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A config dir (`root/config`, with `me`) and its default queue dir (`root/queue`).
struct Site {
    root: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("config")).unwrap();
        fs::write(root.path().join("config/me"), "mx.queue.test\n").unwrap();
        fs::create_dir_all(root.path().join("queue")).unwrap();
        Site { root }
    }

    fn config(&self) -> String {
        self.root.path().join("config").display().to_string()
    }

    fn queue(&self) -> PathBuf {
        self.root.path().join("queue")
    }

    /// `posta queue <args> -c <config>`.
    fn run(&self, args: &[&str]) -> Out {
        let mut a = vec!["queue"];
        a.extend_from_slice(args);
        let cfg = self.config();
        a.extend_from_slice(&["-c", &cfg]);
        posta(&a)
    }

    /// Queue file names in the active queue (no temp files, no subdirectories).
    fn items(&self) -> Vec<String> {
        let mut v: Vec<String> = item::scan(&self.queue())
            .unwrap()
            .0
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        v.sort();
        v
    }
}

fn mailbox(s: &str) -> Mailbox {
    let (l, d) = s.split_once('@').unwrap();
    Mailbox {
        local: l.into(),
        domain: d.into(),
    }
}

/// Commit a message with the real spool; returns the new file names (one per domain).
fn commit(spool: &Spool, from: Option<&str>, rcpts: &[&str], subject: &str) -> Vec<String> {
    let req = CommitRequest {
        uuid: format!("T-{subject}"),
        mail_from: from.map(mailbox),
        mail_params: Default::default(),
        rcpt_to: rcpts
            .iter()
            .map(|r| Recipient {
                mailbox: mailbox(r),
                params: Default::default(),
            })
            .collect(),
        notes: Notes::new(),
        queue_time: now_ms(),
    };
    let body = MessageBody {
        spooled: None,
        tail: format!("Subject: {subject}\r\nFrom: x@y\r\n\r\nthe body of {subject}\r\n").into_bytes(),
    };
    spool.commit(&req, &body).unwrap()
}

/// Rename an item so it arrived `age_min` ago, is due in `next_in_min` and was tried `attempts` times.
fn set_age(dir: &Path, name: &str, age_min: u64, next_in_min: u64, attempts: u32) -> String {
    let now = now_ms();
    let mut q = QueueName::parse(name).unwrap();
    q.arrival = now - age_min * MIN;
    q.next_attempt = now + next_in_min * MIN;
    q.attempts = attempts;
    let new = q.to_string();
    fs::rename(dir.join(name), dir.join(&new)).unwrap();
    new
}

/// The test queue.
struct Items {
    /// s@sender.test → a@alpha.test, 2 minutes old.
    alpha: String,
    /// s@sender.test → b@beta.test, 30 minutes old.
    beta: String,
    /// t@other.test → c@alpha.test, 3 hours old, 3 attempts, next in 20 minutes, last error 4.4.1.
    retried: String,
    /// <> → d@gamma.test, 2 days old.
    bounce: String,
    /// A file with a queue name and a broken header, 1 minute old.
    corrupt: String,
}

fn build(site: &Site) -> Items {
    let q = site.queue();
    let spool = Spool::open(&q, "mx.queue.test", true).unwrap();
    let first = commit(&spool, Some("s@sender.test"), &["a@alpha.test", "b@beta.test"], "one");
    assert_eq!(first.len(), 2);
    let alpha = set_age(&q, &first[0], 2, 0, 0);
    let beta = set_age(&q, &first[1], 30, 0, 0);

    let r = commit(&spool, Some("t@other.test"), &["c@alpha.test"], "two").remove(0);
    let loaded = item::load(&q, &r).unwrap();
    let mut todo = loaded.todo.clone();
    todo.rcpt_to[0].extra.insert("dsn_status".into(), "4.4.1".into());
    todo.rcpt_to[0]
        .extra
        .insert("reason".into(), "connect to mx.alpha.test: connection refused".into());
    let r = item::rewrite(&q, &loaded, &todo, 3, now_ms()).unwrap();
    let retried = set_age(&q, &r, 180, 20, 3);

    let b = commit(&spool, None, &["d@gamma.test"], "three").remove(0);
    let bounce = set_age(&q, &b, 2 * 24 * 60, 0, 0);

    let mut cq = QueueName::parse(&alpha).unwrap();
    cq.counter = 9999;
    cq.arrival = now_ms() - MIN;
    let corrupt = cq.to_string();
    fs::write(q.join(&corrupt), b"\0\0\x01\x00{ not json").unwrap();

    // Not items: a recycled file and a temp file.
    fs::write(q.join("__tmp__.free.1.0"), b"old").unwrap();
    fs::write(q.join("__tmp__.T-x.body"), b"partial").unwrap();
    Items {
        alpha,
        beta,
        retried,
        bounce,
        corrupt,
    }
}

fn json(out: &Out) -> Value {
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn list_shows_every_item_and_corrupt_files() {
    let site = Site::new();
    let it = build(&site);
    let out = site.run(&["list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID "), "{}", out.stdout);
    // Oldest first: bounce (2d), retried (3h), beta (30m), alpha (2m) and the corrupt one (1m).
    let order: Vec<usize> = [&it.bounce, &it.retried, &it.beta, &it.alpha, &it.corrupt]
        .iter()
        .map(|id| lines.iter().position(|l| l.starts_with(id.as_str())).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", out.stdout);
    let line = |id: &str| *lines.iter().find(|l| l.starts_with(id)).unwrap();
    let r = line(&it.retried);
    assert!(r.contains("<t@other.test>") && r.contains("c@alpha.test"), "{r}");
    assert!(r.contains(" 3  in 1"), "attempts and next attempt: {r}"); // in 19m59s
    assert!(r.contains("4.4.1 connect to mx.alpha.test: connection refused"), "{r}");
    assert!(r.contains("3h00m"), "{r}");
    let b = line(&it.bounce);
    assert!(b.contains("<>") && b.contains("2d00h") && b.contains(" now "), "{b}");
    assert!(
        line(&it.corrupt).contains("corrupt: header length 256 runs past the end"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("__tmp__"), "{}", out.stdout);
    assert!(out.stdout.contains("-- 4 item(s), 1 corrupt"), "{}", out.stdout);

    // Filters.
    let ids = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["list", "--json"];
        a.extend_from_slice(args);
        json(&site.run(&a))
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&["--domain", "ALPHA.test"]),
        [it.retried.as_str(), it.alpha.as_str()]
    );
    assert_eq!(ids(&["--sender", "t@other.test"]), [it.retried.as_str()]);
    assert_eq!(ids(&["--sender", "sender.test"]), [it.beta.as_str(), it.alpha.as_str()]);
    assert_eq!(ids(&["--sender", "<>"]), [it.bounce.as_str()]);
    assert_eq!(ids(&["--older-than", "1h"]), [it.bounce.as_str(), it.retried.as_str()]);
    assert_eq!(
        ids(&["--older-than", "10m", "--domain", "beta.test"]),
        [it.beta.as_str()]
    );
    let all = json(&site.run(&["list", "--json"]));
    let corrupt = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == it.corrupt.as_str())
        .unwrap();
    assert!(corrupt["corrupt"].as_str().unwrap().contains("runs past the end"));
    let retried = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == it.retried.as_str())
        .unwrap();
    assert_eq!(retried["attempts"], 3);
    assert_eq!(retried["recipients"][0]["status"], "4.4.1");

    let bad = site.run(&["list", "--older-than", "soon"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("bad duration"), "{}", bad.stderr);

    let empty = Site::new();
    let out = empty.run(&["list"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "queue is empty"));
}

#[test]
fn stat_counts_by_domain_and_age() {
    let site = Site::new();
    build(&site);
    let out = site.run(&["stat"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header,
        ["domain", "T", "5m", "10m", "20m", "40m", "80m", "160m", "320m", "640m", "1280m", "1280m+"]
    );
    let row = |name: &str| -> Vec<String> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row: {}", out.stdout))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // 2m → 5m, 30m → 40m, 3h → 320m, 2d → 1280m+.
    assert_eq!(
        row("TOTAL")[1..],
        ["4", "1", "0", "0", "1", "0", "0", "1", "0", "0", "1"]
    );
    assert_eq!(
        row("alpha.test")[1..],
        ["2", "1", "0", "0", "0", "0", "0", "1", "0", "0", "0"]
    );
    assert_eq!(
        row("gamma.test")[1..],
        ["1", "0", "0", "0", "0", "0", "0", "0", "0", "0", "1"]
    );
    assert!(out.stdout.contains("corrupt 1, held 0"), "{}", out.stdout);

    let j = json(&site.run(&["stat", "--json"]));
    assert_eq!(j["total"]["total"], 4);
    assert_eq!(j["corrupt"], 1);
    assert_eq!(j["recipients"], 4);
    assert_eq!(j["domains"][0]["domain"], "alpha.test");
    assert_eq!(j["domains"][0]["total"], 2);
    assert_eq!(j["labels"].as_array().unwrap().len(), 10);
}

#[test]
fn inspect_shows_envelope_and_headers() {
    let site = Site::new();
    let it = build(&site);
    let out = site.run(&["inspect", &it.retried]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for want in [
        "mail_from:   <t@other.test>",
        "attempts:    3",
        "  <c@alpha.test>",
        "    dsn_status: \"4.4.1\"",
        "    reason: \"connect to mx.alpha.test: connection refused\"",
        "uuid:        T-two.1",
        "headers:\n  Subject: two\n  From: x@y\n",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in {}", out.stdout);
    }
    assert!(!out.stdout.contains("the body of"), "{}", out.stdout);
    let out = site.run(&["inspect", "--body", &it.retried]);
    assert!(
        out.stdout
            .contains("message:\nSubject: two\nFrom: x@y\n\nthe body of two\n"),
        "{}",
        out.stdout
    );

    let out = site.run(&["inspect", "1_1_0_1_nosuch_1_x"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no queue item \"1_1_0_1_nosuch_1_x\""),
        "{}",
        out.stderr
    );
    let out = site.run(&["inspect", &it.corrupt]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("corrupt queue file"), "{}", out.stderr);
}

#[test]
fn delete_by_id_and_by_domain() {
    let site = Site::new();
    let it = build(&site);
    let q = site.queue();
    let out = site.run(&["delete", &it.alpha, &it.beta]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("deleted {}", it.alpha)));
    assert!(!q.join(&it.alpha).exists() && !q.join(&it.beta).exists());

    // An unknown id among known ones: the known ones go, exit code 1.
    let out = site.run(&["delete", "1_1_0_1_nosuch_1_x", &it.bounce]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no queue item"), "{}", out.stderr);
    assert!(!q.join(&it.bounce).exists());

    let out = site.run(&["delete", "--domain", "alpha.test"]);
    assert_ne!(out.code, 0);
    assert!(q.join(&it.retried).exists());
    let out = site.run(&["delete", "--all", "--domain", "alpha.test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("1 item(s) deleted"), "{}", out.stdout);
    assert!(!q.join(&it.retried).exists());
    // The corrupt file is kept (the daemon quarantines it); temp files are untouched.
    assert_eq!(site.items(), [it.corrupt.as_str()]);
    assert!(q.join("__tmp__.free.1.0").exists());
}

#[test]
fn flush_makes_items_due_now_keeping_attempts() {
    let site = Site::new();
    let it = build(&site);
    let q = site.queue();
    let before = now_ms();
    let old = site.items();
    let out = site.run(&["flush", &it.retried]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!q.join(&it.retried).exists());
    let new: Vec<String> = site.items().into_iter().filter(|n| !old.contains(n)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let new = new[0].clone();
    let due = QueueName::parse(&new).unwrap().next_attempt;
    assert!(due >= before && due <= now_ms(), "due {due}");
    let nq = QueueName::parse(&new).unwrap();
    assert_eq!(nq.attempts, 3);
    assert!(
        out.stdout.contains(&format!("flushed {} -> {new}", it.retried)),
        "{}",
        out.stdout
    );
    // The header (and the last error) is unchanged.
    let loaded = item::load(&q, &new).unwrap();
    assert_eq!(loaded.todo.rcpt_to[0].extra["dsn_status"], "4.4.1");

    // Already due items keep their name; by domain; all.
    let out = site.run(&["flush", "--domain", "beta.test"]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.contains(&format!("{}: already due", it.beta)),
        "{}",
        out.stdout
    );
    let out = site.run(&["flush"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("4 item(s) due now"), "{}", out.stdout);
    let now = now_ms();
    assert!(item::scan(&q).unwrap().0.iter().all(|(_, due)| *due <= now));

    let out = site.run(&["flush", "1_1_0_1_nosuch_1_x"]);
    assert_eq!(out.code, 1);
}

#[test]
fn hold_and_release() {
    let site = Site::new();
    let it = build(&site);
    let q = site.queue();
    let out = site.run(&["hold", &it.retried]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(q.join("hold").join(&it.retried).exists());
    // The daemon's start-up scan does not see held items.
    assert!(!site.items().contains(&it.retried));
    assert!(!site.run(&["list"]).stdout.contains(&it.retried));
    let held = site.run(&["list", "--held"]);
    assert!(
        held.stdout.contains(&it.retried) && held.stdout.contains("held"),
        "{}",
        held.stdout
    );
    assert_eq!(json(&site.run(&["stat", "--json"]))["held"], 1);
    // A held item is inspected where it is, not flushed, not held twice.
    assert!(site.run(&["inspect", &it.retried]).stdout.contains("state:       held"));
    let out = site.run(&["flush", &it.retried]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is held; release it first"), "{}", out.stderr);
    assert_eq!(site.run(&["hold", &it.retried]).code, 1);

    let out = site.run(&["release", &it.retried]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(q.join(&it.retried).exists() && !q.join("hold").join(&it.retried).exists());
    assert!(site.items().contains(&it.retried));
    let out = site.run(&["release", &it.retried]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is not held"), "{}", out.stderr);
}

#[test]
fn bounce_queues_a_dsn_to_the_sender() {
    let site = Site::new();
    let it = build(&site);
    let q = site.queue();
    let out = site.run(&["bounce", &it.retried, "--reason", "removed by the postmaster"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!q.join(&it.retried).exists());
    assert!(out.stdout.contains("DSN to <t@other.test> queued as"), "{}", out.stdout);
    let before = [&it.alpha, &it.beta, &it.bounce, &it.corrupt];
    let new: Vec<String> = site.items().into_iter().filter(|n| !before.contains(&n)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let bytes = fs::read(q.join(&new[0])).unwrap();
    let (todo, msg) = decode(&bytes).unwrap();
    assert_eq!(todo.mail_from.original, "<>");
    assert_eq!(todo.rcpt_to[0].original, "<t@other.test>");
    assert_eq!(todo.domain, "other.test");
    let msg = String::from_utf8_lossy(msg);
    for want in [
        "Content-Type: multipart/report; report-type=delivery-status",
        "Reporting-MTA: dns; mx.queue.test",
        "Final-Recipient: rfc822; c@alpha.test",
        "Action: failed",
        "Status: 5.0.0",
        "Diagnostic-Code: X-Posta; removed by the postmaster",
        "From: MAILER-DAEMON@mx.queue.test",
        "Subject: two",
    ] {
        assert!(msg.contains(want), "{want:?} in {msg}");
    }

    // A bounce of a bounce: removed, no DSN.
    let n = site.items().len();
    let out = site.run(&["bounce", &it.bounce, "--reason", "x"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("null sender"), "{}", out.stdout);
    assert_eq!(site.items().len(), n - 1);

    let out = site.run(&["bounce", "1_1_0_1_nosuch_1_x", "--reason", "x"]);
    assert_eq!(out.code, 1);
    assert_ne!(site.run(&["bounce", &it.alpha]).code, 0, "--reason is required");
}

#[test]
fn works_on_a_haraka_queue_dir() {
    let d = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/haraka-queue");
    let q = d.path().join("queue");
    fs::create_dir(&q).unwrap();
    for e in fs::read_dir(&fixture).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), q.join(e.file_name())).unwrap();
    }
    // Haraka quarantines unreadable files as `error.<name>`.
    fs::write(q.join("error.1_1_0_1_x_1_h"), b"bad").unwrap();
    let qd = q.display().to_string();
    let id = "1747300000123_1747300000123_0_4242_Xy7Qz1_3_haraka.example";
    for cmd in ["list", "qlist"] {
        let out = posta(&["queue", cmd, "--queue-dir", &qd]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let line = out.stdout.lines().find(|l| l.starts_with(id)).unwrap();
        assert!(line.contains("<sender@haraka.example>"), "{line}");
        assert!(line.contains("alice@example.net,Bob@Example.NET"), "{line}");
        assert!(!out.stdout.contains("error."), "{}", out.stdout);
    }
    for cmd in ["stat", "qstat"] {
        let out = posta(&["queue", cmd, "--queue-dir", &qd]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stdout.lines().any(|l| l.starts_with("example.net ")),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("quarantined 1"), "{}", out.stdout);
    }
    let out = posta(&["queue", "inspect", id, "--queue-dir", &qd]);
    assert!(out.stdout.contains("\"local_sender\": true"), "{}", out.stdout);
    assert!(out.stdout.contains("  Subject: fixture"), "{}", out.stdout);
    // Nothing was changed.
    assert_eq!(fs::read_dir(&q).unwrap().count(), 2);
}

#[test]
fn missing_dirs_and_bad_ids() {
    let d = tempfile::tempdir().unwrap();
    let gone = d.path().join("nope").display().to_string();
    let out = posta(&["queue", "list", "--queue-dir", &gone]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!("queue directory {gone} does not exist")),
        "{}",
        out.stderr
    );
    let out = posta(&["queue", "stat", "-c", &gone]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("config directory does not exist"), "{}", out.stderr);
    let out = posta(&["queue", "stat", "-c", &gone, "--queue-dir", &gone]);
    assert_ne!(out.code, 0);

    // The config's default queue dir (<config>/../queue) is missing.
    let site = Site::new();
    fs::remove_dir(site.queue()).unwrap();
    let out = site.run(&["stat"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);

    let site = Site::new();
    let out = site.run(&["delete", "__tmp__.free.1.0"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is not a queue item id"), "{}", out.stderr);
    let out = site.run(&["hold", "../../etc/passwd"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no queue item"), "{}", out.stderr);
}
