//! Errors on the commit path: a full disk answers `452 4.3.1`, any other I/O error
//! `451 4.3.0`; nothing half-written stays behind and the session goes on.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount(8) available");
        assert!(st.success(), "mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn body(size: usize) -> Vec<u8> {
    let mut b = b"Subject: fill\r\n\r\n".to_vec();
    while b.len() < size {
        b.extend_from_slice(&[b'y'; 98]);
        b.extend_from_slice(b"\r\n");
    }
    b
}

#[test]
fn full_disk_answers_452_and_leaves_nothing() {
    let mnt = tempfile::tempdir().unwrap();
    let queue = mnt.path().join("q");
    let _fs = Tmpfs::mount(&queue, "128k");
    let q = queue.clone();
    let srv = start(move |cfg| std::fs::write(cfg.join("queue_dir"), q.to_str().unwrap()).unwrap());
    let mut c = srv.client();
    c.expect("EHLO full.example", 250);
    let r = c.send_mail("a@remote.example", &["u@example.test"], &body(200_000));
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text().starts_with("4.3.1"), "{r:?}");
    assert!(queue_files(&queue).is_empty());
    assert!(
        temp_files(&queue).is_empty(),
        "temp file left: {:?}",
        temp_files(&queue)
    );
    // The session and the disk are usable again.
    let r = c.send_mail("a@remote.example", &["u@example.test"], &body(2_000));
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(queue_files(&queue).len(), 1);
}

#[test]
fn io_error_answers_451() {
    let srv = start(|_| {});
    let queue = srv.queue_dir();
    std::fs::remove_dir_all(&queue).unwrap();
    std::fs::write(&queue, b"not a directory").unwrap();
    let mut c = srv.client();
    c.expect("EHLO broken.example", 250);
    let r = c.send_mail("a@remote.example", &["u@example.test"], &body(1_000));
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text().starts_with("4.3.0"), "{r:?}");
    c.expect("NOOP", 250);
}
