//! The durable queue commit without SMTP: how many queue files per second the disk under a
//! directory takes through posta's own commit path, and what each costs in CPU.
//!
//! ```sh
//! cargo bench --bench commit                                   # system temp dir
//! COMMIT_DIR=/var/spool/posta-test COMMIT_THREADS=1,8,32 cargo bench --bench commit
//! ```
//!
//! Two modes, each from 1, 8 and 32 threads by default:
//! - `spool`: [`Spool::commit`], exactly what a `250` after DATA waits for (Haraka queue file
//!   encoding, temp name, write, fdatasync, rename, group directory fsync);
//! - `raw`: only the file system calls of that path (create, write, fdatasync, rename, shared
//!   directory fsync), the floor any one-file-per-message queue pays on this disk.
//!
//! Every run first writes into a new directory of its own with nothing deleted (`dir=fresh`);
//! then all those files are deleted and every run repeated at once (`dir=after_delete`),
//! because file systems (ext4 without a journal in particular) allocate inodes more slowly for
//! a few minutes after many files were deleted.
//!
//! Settings (environment): `COMMIT_DIR` (parent of the run directories, default the system temp
//! dir), `COMMIT_MSGS` (per run, default 8000, at most 200,000), `COMMIT_SIZE` (message bytes,
//! default 1024), `COMMIT_THREADS` (comma list, default `1,8,32`), `COMMIT_MODES` (default
//! `spool,raw`). The binary does nothing unless `--bench` is among its arguments.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use posta::hooks::state::{now_ms, Notes, Recipient};
use posta::protocol::address::Mailbox;
use posta::queue::spool::GroupSync;
use posta::queue::{CommitRequest, MessageBody, Spool};

#[path = "support/proc_stat.rs"]
mod proc_stat;

struct Settings {
    dir: std::path::PathBuf,
    msgs: usize,
    size: usize,
    threads: Vec<usize>,
    modes: Vec<String>,
}

fn settings() -> Result<Settings, String> {
    let num = |k: &str, d: usize| -> Result<usize, String> {
        std::env::var(k).map_or(Ok(d), |v| {
            v.trim().parse().map_err(|_| format!("{k}={v:?} is not a number"))
        })
    };
    let threads = std::env::var("COMMIT_THREADS").unwrap_or_else(|_| "1,8,32".into());
    let threads = threads
        .split(',')
        .map(|t| t.trim().parse::<usize>().map(|n| n.clamp(1, 256)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("COMMIT_THREADS={threads:?}: expected a comma list of numbers"))?;
    let modes: Vec<String> = std::env::var("COMMIT_MODES")
        .unwrap_or_else(|_| "spool,raw".into())
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    if let Some(m) = modes.iter().find(|m| *m != "spool" && *m != "raw") {
        return Err(format!("COMMIT_MODES: unknown mode {m:?} (spool, raw)"));
    }
    Ok(Settings {
        dir: std::env::var("COMMIT_DIR").map_or_else(|_| std::env::temp_dir(), Into::into),
        msgs: num("COMMIT_MSGS", 8000)?.clamp(1, 200_000),
        size: num("COMMIT_SIZE", 1024)?.min(10 << 20),
        threads,
        modes,
    })
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"Received: from client.test ([127.0.0.1]) by mx.test with ESMTP id X; Thu, 26 Nov 2026 \
                  00:00:00 +0000\r\nFrom: <load@client.test>\r\nTo: <user@localhost>\r\nSubject: commit \
                  bench\r\nMessage-ID: <x@client.test>\r\n\r\n"
        .to_vec();
    while m.len() < size {
        m.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwx\r\n");
    }
    m
}

fn request(i: usize) -> CommitRequest {
    CommitRequest {
        uuid: format!("BENCH{i:08}.1"),
        mail_from: Some(Mailbox {
            local: "load".into(),
            domain: "client.test".into(),
        }),
        mail_params: Default::default(),
        rcpt_to: vec![Recipient {
            mailbox: Mailbox {
                local: "user".into(),
                domain: "localhost".into(),
            },
            params: Default::default(),
        }],
        notes: Notes::new(),
        queue_time: now_ms(),
    }
}

/// The file system calls of a commit, nothing else.
fn raw_commit(dir: &Path, sync: &GroupSync, i: usize, msg: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("__tmp__.{i}"));
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    f.write_all(msg)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, dir.join(format!("q{i}")))?;
    sync.sync()
}

/// Commit `msgs` messages from `threads` threads into `dir`: (seconds, CPU ms of this process).
fn run(mode: &str, dir: &Path, s: &Settings, threads: usize) -> Result<(f64, u64), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let msg = message(s.size);
    let spool = if mode == "spool" {
        Some(Spool::open(dir, "mx.test", false).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let sync = GroupSync::new(dir).map_err(|e| e.to_string())?;
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let tck = proc_stat::clock_ticks();
    let cpu0 = proc_stat::cpu_ms("self", tck).unwrap_or_default();
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= s.msgs {
                    break;
                }
                let ok = match &spool {
                    Some(sp) => {
                        let body = MessageBody {
                            spooled: None,
                            tail: msg.clone(),
                        };
                        sp.commit(&request(i), &body).is_ok()
                    }
                    None => raw_commit(dir, &sync, i, &msg).is_ok(),
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = proc_stat::cpu_ms("self", tck).unwrap_or_default();
    let n = failed.load(Ordering::Relaxed);
    if n > 0 {
        return Err(format!("{n} commits failed in {}", dir.display()));
    }
    Ok((secs, (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1)))
}

fn report(label: &str, s: &Settings, (secs, cpu): (f64, u64)) {
    println!(
        "commit {label} msgs={} secs={secs:.2} commits_per_s={:.0} cpu_ms_per_commit={:.3}",
        s.msgs,
        s.msgs as f64 / secs,
        cpu as f64 / s.msgs as f64
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let s = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("commit bench: {e}");
            std::process::exit(2);
        }
    };
    let root = match tempfile::Builder::new().prefix("posta-commit-").tempdir_in(&s.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("commit bench: {}: {e}", s.dir.display());
            std::process::exit(2);
        }
    };
    println!(
        "commit bench in {} ({} messages of {} B per run)",
        root.path().display(),
        s.msgs,
        s.size
    );
    // First every run in directories of their own with nothing deleted; then the files of all
    // of them are deleted and every run repeated right after that.
    let runs: Vec<(&String, usize)> = s
        .modes
        .iter()
        .flat_map(|m| s.threads.iter().map(move |&t| (m, t)))
        .collect();
    for phase in ["fresh", "after_delete"] {
        for (n, &(mode, t)) in runs.iter().enumerate() {
            let dir = root.path().join(format!("{phase}{n}"));
            match run(mode, &dir, &s, t) {
                Ok(r) => report(&format!("mode={mode} threads={t} dir={phase}"), &s, r),
                Err(e) => {
                    eprintln!("commit bench: {e}");
                    std::process::exit(1);
                }
            }
        }
        if phase == "fresh" {
            let t0 = Instant::now();
            for n in 0..runs.len() {
                let _ = fs::remove_dir_all(root.path().join(format!("fresh{n}")));
            }
            println!(
                "deleted the {} files of those runs in {:.2} s",
                runs.len() * s.msgs,
                t0.elapsed().as_secs_f64()
            );
        }
    }
}
